#!/usr/bin/perl
# Validate the ARC chain of the message on stdin with Mail::DKIM::ARC::Verifier (Debian's
# libmail-dkim-perl), keys looked up at the DNS server named by the argument
# ("127.0.0.1:PORT"). One line: "<chain result> <detail>" (pass, fail or none).
use strict;
use warnings;
use Mail::DKIM::ARC::Verifier;
use Net::DNS::Resolver;

my ($host, $port) = split /:/, $ARGV[0];
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 0, retry => 2, udp_timeout => 5,
    tcp_timeout => 5));
my $arc = Mail::DKIM::ARC::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $arc->PRINT($line);
}
$arc->CLOSE;
printf "%s %s\n", $arc->result, $arc->result_detail // "";
