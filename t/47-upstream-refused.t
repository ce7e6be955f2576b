#!/usr/bin/perl
# A back end that refuses nginx's own key (issue 19 item 3): with key confirmation
# (docs/protocol.md §4.8) an XX back end that is nginx-noise tells A it refused A's key, so
# A counts a failed attempt (error line, reason "refused", max_fails, proxy_next_upstream)
# instead of reporting a connected upstream that says nothing. Chains client -> A
# (noise_upstream on) -> B (noise_listen) with B refusing A's key by trusted keys,
# revoked keys and a key zone's deny; the independent Python peer stands in for a
# third-party back end that ignores the request, and, as a crafted back end, for one that
# offers confirmation and then closes, sends garbage where the verdict belongs, refuses,
# or accepts (an independent implementation of §4.8 from the document alone).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(a b other);
$t->write_file('a.trusted', "$pub{a}\n", 0644);
$t->write_file('other.trusted', "$pub{other}\n", 0644);
$t->write_file('a.revoked', "$pub{a}\n", 0644);
my $dir = $t->dir;

my %py;
for my $mode (qw(none accept refuse close garbage)) {
    my $port = $py{$mode} = $t->port("py_$mode");
    $t->spawn($t->{python}, $t->{peer}, 'listen', $port, '--echo', '--count', 1000, '--key', "$dir/b.key",
        ($mode eq 'none' ? () : ('--offer-confirm', $mode)));
}
$t->wait_port($_) for values %py;

$t->write_config(<<'END' . NoiseTest::STATUS_HTTP);
stream {
    log_format st '$server_port $status $upstream_addr';
    access_log %%TESTDIR%%/logs/access.log st;

    noise_keys_zone devices 1m;

    # B: NoiseSocket servers with key b; each refuses A's key its own way, one accepts it.
    server { noise_listen 127.0.0.1:%%PORT_b_untrusted%%; noise_private_key %%TESTDIR%%/b.key;
             noise_trusted_keys %%TESTDIR%%/other.trusted; return "untrusted\n"; }
    server { noise_listen 127.0.0.1:%%PORT_b_revoked%%; noise_private_key %%TESTDIR%%/b.key;
             noise_revoked_keys %%TESTDIR%%/a.revoked; return "revoked\n"; }
    server { noise_listen 127.0.0.1:%%PORT_b_zone%%; noise_private_key %%TESTDIR%%/b.key;
             noise_keys zone=devices miss=deny; return "zone\n"; }
    server { noise_listen 127.0.0.1:%%PORT_b_ok%%; noise_private_key %%TESTDIR%%/b.key;
             noise_trusted_keys %%TESTDIR%%/a.trusted; return "ok $noise_client_key\n"; }

    upstream failover {
        zone failover 64k;
        server 127.0.0.1:%%PORT_b_untrusted%% max_fails=1 fail_timeout=60s;
        server 127.0.0.1:%%PORT_b_ok%%;
    }

    # A: plaintext in, NoiseSocket (XX, key a) out.
    noise_upstream_private_key %%TESTDIR%%/a.key;
    server { listen 127.0.0.1:%%PORT_a_failover%%; noise_upstream on; proxy_pass failover; }
    server { listen 127.0.0.1:%%PORT_a_untrusted%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_b_untrusted%%; }
    server { listen 127.0.0.1:%%PORT_a_noconfirm%%; noise_upstream on; noise_upstream_key_confirmation off;
             proxy_pass 127.0.0.1:%%PORT_b_untrusted%%; }
    server { listen 127.0.0.1:%%PORT_a_revoked%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_b_revoked%%; }
    server { listen 127.0.0.1:%%PORT_a_zone%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_b_zone%%; }
    server { listen 127.0.0.1:%%PORT_a_py_none%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_py_none%%; }
    server { listen 127.0.0.1:%%PORT_a_py_accept%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_py_accept%%; }
    server { listen 127.0.0.1:%%PORT_a_py_refuse%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_py_refuse%%; }
    server { listen 127.0.0.1:%%PORT_a_py_close%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_py_close%%; }
    server { listen 127.0.0.1:%%PORT_a_py_garbage%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_py_garbage%%; }
}
END
$t->run;
my $workers = $t->worker_set;

sub refused_count {
    return $t->series('nginx_noise_handshakes_total{side="upstream",result="failed",reason="refused"}') // 0;
}
sub ask {
    my ($name, $input) = @_;
    my ($got) = $t->plain_exchange($t->port($name), $input // '', keep_open => 1, timeout => 5);
    return $got;
}

# A single refusing back end: the client gets nothing, the session is a 502 (it was a 200
# before key confirmation), and A's error log says why in words, once.
my %why = (
    untrusted => 'our static key is not in its trusted keys',
    revoked   => 'our static key is on its revoked-keys list',
    zone      => 'our static key is not in its trusted keys',
);
for my $b (qw(untrusted revoked zone)) {
    my $mark = $t->error_log_mark;
    my $before = refused_count();
    is(ask("a_$b"), '', "$b: the client gets nothing from a back end that refused A's key");
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~
        /\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: the server refused our static key: \Q$why{$b}\E/ }),
        "$b: A logs the refusal at error, in words");
    my $since = $t->error_log_since($mark);
    my @ours = $since =~ /handshake with upstream .* failed/g;
    is(scalar @ours, 1, "$b: one line of ours on A");
    unlike($since, qr/upstream timed out/, "$b: no misleading proxy timeout line");
    is(refused_count(), $before + 1, "$b: counted as reason refused on the upstream side");
    sleep 0.3;
    my $port = $t->port("a_$b");
    like($t->read_file('logs/access.log'), qr/^$port 502 127\.0\.0\.1:\d+$/m,
        "$b: the session is logged 502, not 200");
}

# With key confirmation off (for a back end that cannot take the request) the refusal is
# only a close after the handshake: a connected upstream, status 200, as the README says.
{
    my $mark = $t->error_log_mark;
    is(ask('a_noconfirm'), '', 'confirmation off: the client gets nothing either');
    sleep 0.5;
    unlike($t->error_log_since($mark), qr/handshake with upstream .* failed/, 'confirmation off: A sees no failed attempt');
    my $port = $t->port('a_noconfirm');
    like($t->read_file('logs/access.log'), qr/^$port 200 127\.0\.0\.1:\d+$/m,
        'confirmation off: the session is a 200 that ends at once');
}

# B's own side of it: the refusal of A's key is an info line there (the peer's fault).
like($t->error_log, qr/\[info\].*noise: handshake failed: client key not in trusted keys: \Q$pub{a}\E/,
    "B logs the refused key at info");

# A group: the refusing server fails over to the next one and is marked down (max_fails=1,
# shared zone), so later sessions go straight to the good server.
{
    my $mark = $t->error_log_mark;
    my @got = map { ask('a_failover') } 1 .. 6;
    is_deeply(\@got, [("ok $pub{a}\n") x 6], 'failover: every session reaches the server that accepts A');
    my @lines = $t->error_log_since($mark) =~ /(handshake with upstream .* failed: the server refused our static key)/g;
    is(scalar @lines, 1, 'failover: the refusing server was tried once, then marked down by max_fails');
    sleep 0.3;
    my $port = $t->port('a_failover');
    my $b_untrusted = $t->port('b_untrusted');
    my $b_ok = $t->port('b_ok');
    like($t->read_file('logs/access.log'), qr/^$port 200 127\.0\.0\.1:$b_untrusted, 127\.0\.0\.1:$b_ok$/m,
        'failover: the access log shows the refused attempt, then the good server');
}

# Third-party back ends: one that ignores the request finishes as before (and a refusal by
# it would be only a close after the handshake: the README says so); one that implements
# §4.8 from the document interoperates: accept, refuse.
is(ask('a_py_none', "hello\n"), "hello\n", 'a back end that ignores the request works as before');
is(ask('a_py_accept', "hello\n"), "hello\n", 'an independent back end that confirms: data flows');
{
    my $mark = $t->error_log_mark;
    is(ask('a_py_refuse', "hello\n"), '', 'an independent back end that refuses: nothing');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~
        /\[error\].*handshake with upstream .* failed: the server refused our static key: our static key is not in its trusted keys/ }),
        'an independent refusal is read as one');
}

# Bad back ends: a promise of a verdict and then a close, or garbage where it belongs.
for ([close => qr/closed the connection without confirming that it accepted our static key/],
     [garbage => qr/malformed key confirmation from the server/]) {
    my ($mode, $re) = @$_;
    my $mark = $t->error_log_mark;
    is(ask("a_py_$mode", "hello\n"), '', "$mode: the client gets nothing");
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /\[error\].*handshake with upstream .* failed: .*$re/ }),
        "$mode: one clear line on A") or diag($t->error_log_since($mark));
    my @ours = $t->error_log_since($mark) =~ /handshake with upstream .* failed/g;
    is(scalar @ours, 1, "$mode: exactly one");
}

unlike($t->error_log, qr/\[(crit|alert|emerg)\]|signal \d+/, 'no worker trouble');
is($t->worker_set, $workers, 'the same workers served everything');

# nginx -t: the flag takes on or off, and says where.
$t->write_config("stream {\n    server { listen 127.0.0.1:1; noise_upstream on;\n"
    . "        noise_upstream_key_confirmation maybe; proxy_pass 127.0.0.1:2; }\n}\n", 'bad.conf');
my ($rc, $out) = $t->test_config('bad.conf');
isnt($rc, 0, 'nginx -t refuses a bad noise_upstream_key_confirmation');
like($out, qr/invalid value "maybe" in "noise_upstream_key_confirmation", it must be "on" or "off".* in \S+bad\.conf:\d+/,
    'nginx -t: the reason, file and line') or diag($out);

done_testing;
