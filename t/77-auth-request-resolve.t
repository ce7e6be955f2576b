#!/usr/bin/perl
# noise_auth_request to an authority named by a host name, resolved at run time by nginx's
# own resolver (the server's `resolver`, here a tiny DNS server, t/lib/dns_server.py),
# without blocking: allowed through the name; the DNS moves the name and the next lookups
# follow it, without reload; a name that does not resolve and a DNS server that never
# answers are refused with one error line each, saying why; the handshake timer and a
# reload end lookups still resolving cleanly; the concurrency cap counts them. Without a
# `resolver` the name is resolved at load (nginx -t fails when it cannot be).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
$t->keygen('server');
my $fresh = 0;
sub fresh { my $name = 'k' . ++$fresh; return ($name, $t->keygen($name)) }
sub client {
    my ($port, $key, @opts) = @_;
    return $t->noise_client($t->port($port), '', '--key', "$dir/$key.key", @opts);
}
sub errors_since { my $m = shift; return grep { /\[(error|crit|alert|emerg)\]/ } split /\n/, $t->error_log_since($m) }

sub answers { $t->write_file('dns.txt', join('', map { "$_\n" } @_), 0644) }
answers('auth.test 127.0.0.1', 'moving.test 127.0.0.1', 'quiet.test silent');

# Configuration: with a resolver nothing is resolved at load; without one a name that does
# not resolve fails nginx -t, and one that does (localhost) passes.
my $srv = 'noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; return x;';
my $zone = 'noise_keys_zone d 1m;';
my $keys = 'noise_keys zone=d miss=lookup;';
$t->write_config("stream { $zone resolver 127.0.0.1:1; server { $srv $keys noise_auth_request http://no-such-host.invalid/; } }");
my ($rc, $out) = $t->test_config;
is($rc, 0, 'with a resolver, a name is not resolved at load') or diag($out);
$t->write_config("stream { $zone server { $srv $keys noise_auth_request http://no-such-host.invalid:8080/; } }");
($rc, $out) = $t->test_config;
isnt($rc, 0, 'without a resolver, a name that does not resolve fails nginx -t');
like($out, qr/cannot resolve "no-such-host\.invalid:8080" \(without a "resolver".*\) in \S+nginx\.conf:\d+/, 'saying why and where');
$t->write_config("stream { $zone server { $srv $keys noise_auth_request http://localhost:8080/; } }");
($rc, $out) = $t->test_config;
is($rc, 0, 'without a resolver, a name that resolves at load passes') or diag($out);
for my $case (['http://auth.test:0/', 'port 0'], ['http://auth.test:99999/', 'a port over 65535'],
              ['http://auth.test:x/', 'a port that is no number'], ['http://a!b/', 'a character no host name has']) {
    $t->write_config("stream { $zone resolver 127.0.0.1:1; server { $srv $keys noise_auth_request $case->[0]; } }");
    ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$case->[1] fails nginx -t");
    like($out, qr/invalid host or port in .*nginx\.conf:\d+/s, "$case->[1]: says why and where");
}

my $auth = $t->port('auth');
$t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', $auth, $dir);
ok($t->wait_port($auth), 'the authority listens');
$t->spawn($t->{python}, $t->repo . '/t/lib/dns_server.py', $t->port('dns'), "$dir/dns.txt");

$t->write_config(<<"END" . NoiseTest::STATUS_HTTP);
stream {
    noise_keys_zone devices 1m;
    noise_private_key %%TESTDIR%%/server.key;
    noise_keys zone=devices miss=lookup;
    # Every handshake asks, so that each one resolves.
    noise_auth_cache_valid allow=0 deny=0;
    noise_auth_request_timeout 5s;
    resolver 127.0.0.1:%%PORT_dns%% valid=1s ipv6=off;
    resolver_timeout 1s;
    server { noise_listen 127.0.0.1:%%PORT_name%%; noise_auth_request http://auth.test:$auth/allow;
             return "device=\$noise_key_attr_device\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_moving%%; noise_auth_request http://moving.test:$auth/allow;
             return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_nx%%; noise_auth_request http://nx.test:$auth/allow; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_quiet%%; noise_auth_request http://quiet.test:$auth/allow;
             return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_hstimer%%; noise_auth_request http://quiet.test:$auth/allow;
             resolver_timeout 30s; noise_auth_request_timeout 30s; noise_handshake_timeout 1s;
             return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_cap%%; noise_auth_request http://quiet.test:$auth/allow;
             resolver_timeout 30s; noise_auth_request_timeout 30s; noise_handshake_timeout 4s;
             noise_auth_request_concurrency 2; return "in\\n"; }
}
END
$t->run;

# Allowed through the name, with the attributes of the answer.
my ($k, $pub) = fresh();
my $mark = $t->error_log_mark;
like(client('name', $k)->{out}, qr/^device=d-\w+\n\z/, 'allowed by an authority named by a host name');
like($t->read_file('requests.log'), qr{^/allow \Q$pub\E }m, 'the authority was asked');
is(join('', errors_since($mark)), '', 'no error line');

# The DNS moves the name: the next lookups follow it, without reload.
($k) = fresh();
is(client('moving', $k)->{out}, "in\n", 'moving.test: allowed at its first address');
answers('auth.test 127.0.0.1', 'moving.test 127.0.0.2', 'quiet.test silent');
$mark = $t->error_log_mark;
my $refused = $t->wait_for(10, sub { my ($k) = fresh(); client('moving', $k)->{out} eq '' });
ok($refused, 'once the cached answer expires, lookups go to the new address (nothing listens there: refused)');
like(join("\n", errors_since($mark)), qr/cannot connect to the authority http:\/\/moving\.test:\d+\/allow: .*refused/i,
    'saying that the authority cannot be reached');
answers('auth.test 127.0.0.1', 'moving.test 127.0.0.1', 'quiet.test silent');
ok($t->wait_for(10, sub { my ($k) = fresh(); client('moving', $k)->{out} eq "in\n" }), 'moved back: allowed again');

# A name that does not resolve, and a DNS server that never answers: refused, one error
# line each, naming the key and saying why.
for my $case (['nx', qr/cannot resolve the authority's name nx\.test \(http:\/\/nx\.test:\d+\/allow\): Host not found/, 'an unknown name'],
              ['quiet', qr/cannot resolve the authority's name quiet\.test .*: Operation timed out/, 'a DNS server that never answers']) {
    my ($port, $why, $what) = @$case;
    ($k, $pub) = fresh();
    $mark = $t->error_log_mark;
    is(client($port, $k)->{out}, '', "$what: refused");
    ok($t->wait_for(3, sub { errors_since($mark) >= 1 }), "$what: logged");
    my @lines = errors_since($mark);
    is(scalar(@lines), 1, "$what: one error line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/\[error\].*$why.*\Q$pub\E|\[error\].*\Q$pub\E.*$why/, "$what: it says why, naming the key");
}
like($t->metrics, qr/^nginx_noise_auth_requests_total\{result="timeout"\} [1-9]/m, 'the resolver timeout is counted as a timeout');

my $workers = $t->worker_set;
my $fds = $t->fd_total;

# The handshake timer ends a lookup still resolving: cancelled, no error, nothing left.
($k) = fresh();
$mark = $t->error_log_mark;
is(client('hstimer', $k)->{out}, '', 'the handshake timer ends a lookup that is still resolving');
ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /\[info\].*handshake timed out/ }), 'as a handshake timeout');
is(join('', errors_since($mark)), '', 'no error or alert line (the resolution was cancelled)');

# The concurrency cap counts lookups that are resolving: 2 per worker, 2 workers.
$mark = $t->error_log_mark;
my @pids = map { my ($name) = fresh(); $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('cap'), '--key', "$dir/$name.key") } 1 .. 8;
ok($t->wait_for(10, sub { (() = $t->error_log_since($mark) =~ /lookups are already in flight/g) >= 4 }),
    'over the cap, handshakes are refused while lookups resolve');
ok($t->wait_for(10, sub { (() = $t->error_log_since($mark) =~ /\[info\].*handshake timed out/g) >= 1 }),
    'and the ones resolving end with their handshake timer');
waitpid($_, 0) for @pids;
unlike($t->error_log_since($mark), qr/\[(alert|crit|emerg)\]/, 'no alert (every resolution cancelled cleanly)');

# A reload while a lookup resolves: the old worker ends it with its handshake timer and
# exits; the new workers resolve with their own resolver.
$mark = $t->error_log_mark;
my ($name) = fresh();
my $pid = $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('hstimer'), '--key', "$dir/$name.key");
sleep 0.3;
my %old = map { $_ => 1 } $t->worker_pids;
$t->reload;
ok($t->wait_for(10, sub { !grep { kill 0, $_ } keys %old }), 'the old workers exit after the reload');
waitpid($pid, 0);
unlike($t->error_log_since($mark), qr/\[(alert|crit|emerg)\]/, 'no alert');
($k) = fresh();
like(client('name', $k)->{out}, qr/^device=d-\w+\n\z/, 'the new workers resolve the name');
ok($t->wait_for(5, sub { $t->fd_total <= $fds }), 'no descriptor left');

# A worker that exits at once (SIGTERM) while lookups resolve: no crash, clients closed.
$mark = $t->error_log_mark;
@pids = map { my ($name) = fresh(); $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('cap'), '--key', "$dir/$name.key") } 1 .. 4;
sleep 0.5;
my @before = $t->worker_pids;
kill 'TERM', @before;
ok($t->wait_for(10, sub { !grep { kill 0, $_ } @before }), 'the workers exit at once, lookups resolving');
ok($t->wait_for(10, sub { !grep { waitpid($_, 1) == 0 } @pids }), 'their clients are closed');
ok($t->wait_for(10, sub { $t->worker_pids >= $t->workers }), 'the master starts new workers');
unlike($t->error_log_since($mark), qr/exited on signal|\[alert\]/, 'no worker crashed, no alert');
($k) = fresh();
like(client('name', $k)->{out}, qr/^device=d-\w+\n\z/, 'and the name resolves again');

done_testing;
