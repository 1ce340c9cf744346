// Verify every DKIM signature of the message on stdin with mailauth (postalsys), keys
// looked up at the DNS server named by the argument ("127.0.0.1:PORT").
// One line per signature: "<result> d=<domain> s=<selector> a=<algorithm>".
"use strict";
const { Resolver } = require("node:dns").promises;
const { dkimVerify } = require("mailauth/lib/dkim/verify");

async function main() {
    const resolver = new Resolver({ timeout: 5000, tries: 2 });
    resolver.setServers([process.argv[2]]);
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    const result = await dkimVerify(Buffer.concat(chunks), {
        resolver: (name, type) => resolver.resolve(name, type),
    });
    for (const sig of result.results) {
        const info = sig.status || {};
        console.log(`${info.result} d=${sig.signingDomain} s=${sig.selector} a=${sig.algo}`);
    }
}

main().catch((err) => {
    console.error(err);
    process.exit(2);
});
