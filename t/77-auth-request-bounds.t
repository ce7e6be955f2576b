#!/usr/bin/perl
# What a flood and a careless operator cannot do to handshake-time authorization (the
# findings of an outside probe): cached answers of fresh self-made keys never fill the key
# zone for good (at most half of it, swept once expired, evicted by an operator's write);
# a client that resets, or closes while its handshake still owes it a message (IK), ends
# its lookup at once, queued or in flight; one server's stuck lookups do not use up
# another's noise_auth_request_concurrency; a state file removed behind nginx's back
# refuses changes instead of losing them; an empty state file is said at start; the API
# refuses a JSON field given twice and a ttl beyond ten years.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
chmod 0755, $dir;
mkdir "$dir/state";
my ($uid, $gid) = (getpwnam('nobody'))[2, 3];
chown $uid, $gid, "$dir/state" if $> == 0;
my $server_pub = $t->keygen('server');
my $ik = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';
my $fresh = 0;
sub fresh { my $name = 'k' . ++$fresh; return ($name, $t->keygen($name)) }
sub urlkey { $t->urlkey(@_) }
sub errors_since { my $m = shift; return grep { /\[(error|crit|alert|emerg)\]/ } split /\n/, $t->error_log_since($m) }
sub requests {
    my ($key) = @_;
    return scalar grep { /^\S+ \Q$key\E / } split /\n/, $t->read_file('requests.log');
}
# API calls through curl: returns (status, body).
sub api { $t->http_call(@_) }
sub ik { my ($port, $name) = @_; return $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port($port), '--key', "$dir/$name.key", '--protocol', $ik, '--remote-key', $server_pub) }

my $auth = $t->port('auth');
$t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', $auth, $dir);
ok($t->wait_port($auth), 'the authority listens');
# An authority that accepts and never answers.
my $hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1:' . $t->port('hole'), Listen => 128, ReuseAddr => 1)
    or die "hole: $!";
$t->write_file('state/keys.journal', '', 0644);
chown $uid, $gid, "$dir/state/keys.journal" if $> == 0;

$t->write_config(<<"END");
stream {
    # 32k: 255 keys.
    noise_keys_zone small 32k;
    noise_keys_zone keys 1m state=state/keys.journal;
    noise_private_key %%TESTDIR%%/server.key;
    noise_protocol $ik Noise_XX_25519_ChaChaPoly_BLAKE2s;
    server { noise_listen 127.0.0.1:%%PORT_flood%%; noise_keys zone=small miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/deny; noise_auth_cache_valid deny=2s;
             return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_hold%%; noise_keys zone=keys miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/hold; noise_auth_request_timeout 60s;
             noise_handshake_timeout 60s; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_queue%%; noise_keys zone=keys miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/hold; noise_auth_request_timeout 60s;
             noise_handshake_timeout 60s; noise_auth_request_concurrency 1 wait; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_stuck%%; noise_keys zone=keys miss=lookup;
             noise_auth_request http://127.0.0.1:%%PORT_hole%%/; noise_auth_request_timeout 60s;
             noise_handshake_timeout 60s; noise_auth_request_concurrency 2; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_healthy%%; noise_keys zone=keys miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/allow; noise_auth_request_concurrency 2;
             return "healthy\\n"; }
}
http {
    access_log off;
    server {
        listen 127.0.0.1:%%PORT_http%%;
        location /small/ { noise_keys_api zone=small write=on; }
        location /keys/ { noise_keys_api zone=keys write=on; }
    }
}
END
my $mark = $t->error_log_mark;
$t->run;
like($t->error_log_since($mark), qr/\[warn\].*key zone "keys": .*the file is empty, without even its header/, 'an empty state file is a warn line at start');

# 1. A flood of fresh keys whose (deny) answers are cached for 2 s.
my ($st, $body) = api('GET', '/small/');
my ($cap) = $body =~ /"capacity":(\d+)/;
ok($cap && $cap > 100, "the small zone holds $cap keys");
my @pids = map { my ($name) = fresh(); ik('flood', $name) } 1 .. int(1.1 * $cap);
waitpid($_, 0) for @pids;
($st, $body) = api('GET', '/small/');
my ($keys) = $body =~ /"keys":(\d+)/;
my ($cached) = $body =~ /"cached":(\d+)/;
cmp_ok($cached, '<=', int(($cap + 1) / 2), "cached answers take at most half the zone ($cached of $cap)");
is($keys, $cached, 'and they are all the zone holds');
for my $i (1 .. int($cap / 2)) {
    my ($s) = api('PUT', '/small/' . urlkey($t->keygen("op$i")), '{"verdict":"allow"}');
    if ($s ne '201') { fail("operator write $i: $s " . $t->read_file('api.out')); last }
}
pass('an operator fills the other half while the cached answers are fresh');
my ($s) = api('PUT', '/small/' . urlkey($t->keygen('evicting')), '{"verdict":"allow"}');
is($s, '201', 'and one more write evicts a cached answer rather than refuse');
my $bulk = join '', map { '{"key":"' . $t->keygen("bulk$_") . "\",\"verdict\":\"allow\"}\n" } 1 .. 5;
($s, $body) = api('POST', '/small/', $bulk);
like($s, qr/^20\d$/, 'so does a bulk load: cached answers count as room') or diag($body);
sleep 2.5;
my $ok = 1;
for my $i (1 .. int($cap / 2) - 8) {
    my ($s) = api('PUT', '/small/' . urlkey($t->keygen("late$i")), '{"verdict":"allow"}');
    $ok = 0, diag("late write $i: $s " . $t->read_file('api.out')), last if $s ne '201';
}
ok($ok, 'once the cached answers expire their room is the operator\'s again');

# 2. Clients that reset, or close an IK handshake that waits for its lookup: the lookup
# ends at once (the authority holds its answers until "release").
unlink "$dir/release";
my $fds = $t->fd_total;
my @gone = map { [fresh()] } 1 .. 8;
@pids = map { ik('hold', $_->[0]) } @gone;
ok($t->wait_for(10, sub { (grep { requests($_->[1]) } @gone) == @gone }), 'eight lookups in flight');
cmp_ok($t->fd_total, '>=', $fds + 16, 'each holds a client and an authority connection');
$mark = $t->error_log_mark;
kill 'KILL', @pids;
waitpid($_, 0) for @pids;
ok($t->wait_for(5, sub { $t->fd_total <= $fds }), 'the clients gone, their lookups end at once (long before their timeout)');
ok($t->wait_for(3, sub { (() = $t->error_log_since($mark) =~ /\[info\].*the client closed the connection while its key was being looked up/g) == 8 }),
    'one info line each');
is(join("\n", errors_since($mark)), '', 'no error line');
# Queued: with one slot per worker, clients that leave the queue are never dialled.
my @queued = map { [fresh(), undef] } 1 .. 6;
$_->[2] = ik('queue', $_->[0]) for @queued;
ok($t->wait_for(10, sub { (grep { requests($_->[1]) } @queued) >= 1 }), 'the first lookups in flight, the rest queued');
# Every client has connected by then (a slot that was free has taken one).
sleep 1.5;
my @inflight = grep { requests($_->[1]) } @queued;
my @waiting = grep { !requests($_->[1]) } @queued;
# The queued ones leave first (their lookups must go without a word to the authority),
# then the ones in flight, whose freed slots would start the queue.
kill 'KILL', map { $_->[2] } @waiting;
waitpid($_->[2], 0) for @waiting;
sleep 0.5;
kill 'KILL', map { $_->[2] } @inflight;
waitpid($_->[2], 0) for @inflight;
sleep 0.5;
$t->write_file('release', '');
my ($live, $live_pub) = fresh();
is($t->noise_client($t->port('queue'), '', '--key', "$dir/$live.key")->{out}, "in\n", 'a live client behind them gets in');
my $dialled = grep { requests($_->[1]) } @waiting;
is($dialled, 0, 'the authority never heard of the ' . scalar(@waiting) . ' queued clients that left');

# 3. One server's stuck lookups leave another's slots alone.
my @stuck = map { my ($name) = fresh(); ik('stuck', $name) } 1 .. 6;
sleep 1;
($live) = fresh();
is($t->noise_client($t->port('healthy'), '', '--key', "$dir/$live.key")->{out}, "healthy\n",
    'a server with its own authority admits while another server\'s lookups hang');
kill 'KILL', @stuck;
waitpid($_, 0) for @stuck;

# 4. The API: a field given twice, a ttl beyond ten years.
($s, $body) = api('PUT', '/keys/' . urlkey($t->keygen('dup')), '{"verdict":"allow","verdict":"deny"}');
is($s, '400', 'a field given twice: 400');
like($body, qr/the field \\"verdict\\" is given twice/, 'saying which');
($s) = api('PUT', '/keys/' . urlkey($t->keygen('dup2')), '{"verdict":"allow","attrs":{"a":"1","a":"2"}}');
is($s, '400', 'an attribute given twice: 400');
($s, $body) = api('PUT', '/keys/' . urlkey($t->keygen('ttl')), '{"verdict":"allow","ttl":315360001}');
is($s, '400', 'a ttl beyond ten years: 400');
like($body, qr/1 to 315360000/, 'saying the range');
($s) = api('PUT', '/keys/' . urlkey($t->keygen('ttl2')), '{"verdict":"allow","ttl":315360000}');
is($s, '201', 'ten years is accepted');

# 5. The state file removed behind nginx's back: changes are refused, not lost.
($s) = api('PUT', '/keys/' . urlkey($t->keygen('before')), '{"verdict":"allow"}');
is($s, '201', 'a change before');
unlink "$dir/state/keys.journal";
$mark = $t->error_log_mark;
($s, $body) = api('PUT', '/keys/' . urlkey($t->keygen('after')), '{"verdict":"allow"}');
is($s, '500', 'with the state file removed a change is refused');
like($body, qr/was removed outside nginx/, 'saying why');
ok(!-e "$dir/state/keys.journal", 'and no headerless file is made in its place');
like(join("\n", errors_since($mark)), qr/\[error\].*state file .*keys\.journal" was removed outside nginx/, 'one error line');
$t->stop;
$mark = $t->error_log_mark;
$t->run;
like($t->error_log_since($mark), qr/key zone "keys": 0 keys loaded/, 'nginx starts again (an empty zone: the file was removed)');
ok(-s "$dir/state/keys.journal", 'with a state file written at start');
($s) = api('PUT', '/keys/' . urlkey($t->keygen('again')), '{"verdict":"allow"}');
is($s, '201', 'and changes are kept again');

done_testing;
