#!/usr/bin/perl
# Verify every DKIM signature of the message on stdin with Mail::DKIM (Debian's
# libmail-dkim-perl), keys looked up at the DNS server named by the argument
# ("127.0.0.1:PORT"). One line per signature: "<result> d=<domain> s=<selector> a=<algorithm>".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = split /:/, $ARGV[0];
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 0, retry => 2, udp_timeout => 5,
    tcp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    printf "%s d=%s s=%s a=%s\n", $sig->result, $sig->domain, $sig->selector, $sig->algorithm;
}
