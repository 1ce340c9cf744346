"""HELP texts (RFC 5321 §4.1.1.8): 214 replies a person at a terminal can read."""

from __future__ import annotations

from ._replies import Reply, echo, reply

_TOPICS: dict[str, tuple[str, ...]] = {
    "HELO": ("HELO <hostname>", "    Introduce yourself (plain SMTP, no extensions)."),
    "EHLO": ("EHLO <hostname>", "    Introduce yourself and list the ESMTP extensions."),
    "MAIL": (
        "MAIL FROM:<sender> [SIZE=n] [BODY=7BIT|8BITMIME|BINARYMIME] [SMTPUTF8]",
        "    [RET=FULL|HDRS] [ENVID=id] [BY=seconds;R|N] [AUTH=<addr>]",
        "    Start a mail transaction; <> is the null sender of bounces.",
    ),
    "RCPT": (
        "RCPT TO:<recipient> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=rfc822;addr]",
        "    Add a recipient; repeat for each one.",
    ),
    "DATA": (
        "DATA",
        '    Send the message: headers, a blank line, the body, then "." alone on a line.',
    ),
    "BDAT": ("BDAT <octets> [LAST]", "    Send the message in counted chunks (CHUNKING)."),
    "RSET": ("RSET", "    Abandon the current mail transaction."),
    "NOOP": ("NOOP", "    Do nothing; the server answers 250."),
    "QUIT": ("QUIT", "    End the session."),
    "VRFY": ("VRFY <address>", "    Ask whether an address is deliverable here."),
    "EXPN": ("EXPN <alias>", "    Ask for the members of a mailing list or alias."),
    "HELP": ("HELP [command]", "    This help."),
    "VERB": ("VERB", "    Ask for verbose replies."),
    "ETRN": ("ETRN [@|#]<domain>", "    Ask the server to run its queue for a domain."),
    "AUTH": ("AUTH <mechanism> [initial-response]", "    Authenticate (SMTP AUTH)."),
    "STARTTLS": ("STARTTLS", "    Switch the session to TLS; then say EHLO again."),
}


def help_reply(topic: str | None) -> Reply:
    """``HELP`` lists the commands; ``HELP <command>`` explains one."""
    if topic is None:
        names = " ".join(_TOPICS)
        lines = (
            "This is Petrel, an ESMTP server.",
            "Topics:",
            f"    {names}",
            'For more information use "HELP <topic>".',
            "End of HELP info",
        )
        return Reply(214, lines, "2.0.0")
    text = _TOPICS.get(topic.upper())
    if text is None:
        return reply(504, "5.3.0", f'HELP topic "{echo(topic)}" unknown')
    return Reply(214, (*text, "End of HELP info"), "2.0.0")
