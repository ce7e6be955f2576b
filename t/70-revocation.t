#!/usr/bin/perl
# noise_revoked_keys and noise_upstream_revoked_keys: a deny list in the trusted-keys format.
# A listed client key is refused even without noise_trusted_keys (and even when trusted);
# a back end presenting a listed key is a failed attempt; an empty list revokes nobody; a
# bad line is an nginx -t error naming the file and line.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $server_pub = $t->keygen('server');
my $good_pub = $t->keygen('good');
my $bad_pub = $t->keygen('bad');
my $b1_pub = $t->keygen('b1');
my $b2_pub = $t->keygen('b2');
$t->keygen('gateway');
$t->write_file('revoked', "# lost laptop\n$bad_pub\n", 0644);
$t->write_file('revoked-backends', "$b1_pub\n", 0644);
$t->write_file('trusted', "$good_pub\n$bad_pub\n", 0644);
$t->write_file('empty', "# nobody yet\n", 0644);
$t->write_file('badline', "$bad_pub\nnot-a-key\n", 0644);
my $dir = $t->dir;

# Configuration errors.
$t->write_config('stream { noise_revoked_keys %%TESTDIR%%/badline; }');
my ($rc, $out) = $t->test_config;
isnt($rc, 0, 'a revoked-keys file with a bad line fails nginx -t');
like($out, qr/"noise_revoked_keys": \S+badline:2: not a base64 key in \S+nginx\.conf:\d+/, 'the error names both files and lines');
$t->write_config('stream { noise_upstream_revoked_keys /dev/zero; }');
($rc, $out) = $t->test_config;
like($out, qr/"noise_upstream_revoked_keys": \/dev\/zero: larger than/, 'a huge revoked-keys file is refused');

$t->echo_backend('echo');
$t->write_config(<<'END');
stream {
    noise_private_key %%TESTDIR%%/server.key;
    server {
        noise_listen 127.0.0.1:%%PORT_open%%;
        noise_revoked_keys %%TESTDIR%%/revoked;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_trusted%%;
        noise_trusted_keys %%TESTDIR%%/trusted;
        noise_revoked_keys %%TESTDIR%%/revoked;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_empty%%;
        noise_revoked_keys %%TESTDIR%%/empty;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server { noise_listen 127.0.0.1:%%PORT_b1%%; noise_private_key %%TESTDIR%%/b1.key; return "b1\n"; }
    server { noise_listen 127.0.0.1:%%PORT_b2%%; noise_private_key %%TESTDIR%%/b2.key; return "b2\n"; }
    upstream backends { zone backends 64k; server 127.0.0.1:%%PORT_b1%%; server 127.0.0.1:%%PORT_b2%%; }
    server {
        listen 127.0.0.1:%%PORT_gw%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/gateway.key;
        noise_upstream_revoked_keys %%TESTDIR%%/revoked-backends;
        proxy_pass backends;
    }
}
END
my $start = $t->error_log_mark;    # nginx -t above logged its emerg lines
$t->run;
for my $case (['open', 'without trusted keys'], ['trusted', 'even when trusted']) {
    my ($port, $what) = ($t->port($case->[0]), $case->[1]);
    my $r = $t->noise_client($port, "hi\n", '--key', "$dir/good.key");
    is($r->{out}, "hi\n", "$what: a good key gets through");
    my $mark = $t->error_log_mark;
    $r = $t->noise_client($port, "hi\n", '--key', "$dir/bad.key");
    is($r->{out}, '', "$what: a revoked key gets nothing");
    ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /\[info\].*noise: handshake failed: client key is revoked: \Q$bad_pub\E/ }),
        "$what: the info line names the revoked key");
}
my $r = $t->noise_client($t->port('empty'), "hi\n", '--key', "$dir/bad.key");
is($r->{out}, "hi\n", 'an empty revoked-keys file revokes nobody');

# Upstream: b1 presents a revoked key, so every session ends up on b2.
my $mark = $t->error_log_mark;
my %seen;
for (1 .. 6) {
    my ($got) = $t->plain_exchange($t->port('gw'), '', keep_open => 1, timeout => 5);
    $seen{$got =~ s/\n//r}++;
}
is_deeply(\%seen, {b2 => 6}, 'a back end with a revoked key is a failed attempt: all sessions on b2');
like($t->error_log_since($mark), qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: server key is revoked: \Q$b1_pub\E/,
    'the error line names the back end and its revoked key');
unlike($t->error_log_since($start), qr/\[(crit|alert|emerg)\]/, 'nothing critical');
done_testing;
