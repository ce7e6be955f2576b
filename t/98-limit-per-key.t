#!/usr/bin/perl
# noise_limit_conn_per_key: concurrent established connections per client static key,
# across workers (2), in shared memory. With the limit held by one key, more connections
# with that key are refused right after the handshake (one info line with the key's
# fingerprint, reason "limit" in noise_status) wherever they land, while another key
# passes; a close releases a count; a reload keeps the counts (old workers still serve
# theirs); workers killed with their connections leave no count behind. nginx -t warns
# when a $noise_* variable (or a map of one) keys limit_conn or feeds stream `set` in a
# noise_listen server. Bad input: 0, a non-number, two numbers, a duplicate, the wrong
# context.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen($_) for qw(server a b);
$t->echo_backend('echo');
my $dir = $t->dir;
my $limit = 3;
$t->write_config(<<"END" . NoiseTest::STATUS_HTTP);
stream {
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_limit_conn_per_key $limit;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
}
END
$t->run;
my ($noise, $http) = ($t->port('noise'), $t->port('http'));

sub value { $t->series($_[0]) }
my $established = 'nginx_noise_connections{side="server",state="established"}';
my $limited = 'nginx_noise_handshakes_total{side="server",result="failed",reason="limit"}';

# A client of key $who that holds its connection open (stdin stays open for 120 s).
sub holder {
    my ($who) = @_;
    return $t->spawn('sh', '-c', "sleep 120 | $t->{cli} connect 127.0.0.1:$noise --key $dir/$who.key");
}
sub hold {
    my ($n, $who) = @_;
    my $before = value($established);
    my @pids = map { holder($who) } 1 .. $n;
    $t->wait_for(10, sub { value($established) == $before + $n });
    return @pids;
}
sub drop {
    my (@pids) = @_;
    kill 'TERM', -$_ for @pids;
    waitpid($_, 0) for @pids;
}
sub probe {
    my ($who) = @_;
    return $t->noise_client($noise, "probe\n", '--key', "$dir/$who.key")->{out};
}
my $fp = sub {
    my ($who) = @_;
    # The fingerprint the module logs: the first 8 bytes of SHA-256 of the key, as hex.
    my $r = $t->run_cmd(['sh', '-c', "base64 -d < $dir/$who.pub | sha256sum"]);
    return substr($r->{out}, 0, 16);
};

# 1. The limit is per key, over both workers.
my @held = hold($limit, 'a');
is(value($established), $limit, "$limit connections of key a established");
my $mark = $t->error_log_mark;
my $refusals = 6;    # they land on either worker
is(probe('a'), '', "connection " . ($limit + 1 + $_ - 1) . " of key a is refused") for 1 .. $refusals;
is(value($limited), $refusals, 'each refusal counted with reason "limit"');
my $log = $t->error_log_since($mark);
my $a_fp = $fp->('a');
my @lines = $log =~ /\[info\] .*noise: client key (SHA256:[0-9a-f]+) already has $limit connection\(s\), the noise_limit_conn_per_key limit of $limit; closing/g;
is(scalar @lines, $refusals, 'one info line per refusal') or diag($log);
is($lines[0], "SHA256:$a_fp", 'the line names the key by its fingerprint');
is(probe('b'), "probe\n", 'another key passes');
is(value('nginx_noise_handshakes_total{side="server",result="ok"}'), $limit + 1, 'refused handshakes are not counted ok');

# 2. A close releases its count.
drop(shift @held);
$t->wait_for(10, sub { value($established) == $limit - 1 });
is(probe('a'), "probe\n", 'after one closes, a new connection of key a passes');
push @held, hold(1, 'a');
is(probe('a'), '', 'and the limit holds again with it');

# 3. A reload keeps the counts: the old workers still serve key a's connections.
$t->reload;
is(probe('a'), '', 'after a reload, key a is still at its limit');
is(probe('b'), "probe\n", 'key b passes after the reload');
drop(@held);
$t->wait_for(10, sub { value($established) == 0 });
is(probe('a'), "probe\n", 'the old workers released their counts on close');

# 4. Workers killed with connections open: their counts do not outlive them.
@held = hold($limit, 'a');
is(probe('a'), '', 'key a at its limit again');
my @old = $t->worker_pids;
kill 'KILL', @old;
$t->wait_for(10, sub { my %o = map { $_ => 1 } @old; (grep { !$o{$_} } $t->worker_pids) >= $t->workers });
drop(@held);
is(probe('a'), "probe\n", 'after the workers died, key a is not held by their counts');
is(probe('a'), "probe\n", 'twice');

# 5. nginx -t warns about $noise_* keys before the handshake.
my $warn_conf = <<'END';
stream {
    limit_conn_zone $noise_client_key zone=by_key:1m;
    map $noise_client_key $who { default $noise_client_key; }
    map $who $team { default "t-$who"; }
    limit_conn_zone $team zone=by_team:1m;
    limit_conn_zone $binary_remote_addr zone=by_addr:1m;
    limit_conn by_team 5;
    server {
        noise_listen 127.0.0.1:%%PORT_w1%%;
        noise_private_key %%TESTDIR%%/server.key;
        limit_conn by_key 1;
        limit_conn by_addr 10;
        set $copy $noise_client_key;
        return "x";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_w2%%;
        noise_private_key %%TESTDIR%%/server.key;
        return "x";
    }
    server {
        listen 127.0.0.1:%%PORT_w3%%;
        limit_conn by_key 1;
        set $copy2 $noise_client_key;
        return "x";
    }
}
END
$t->write_config($warn_conf, 'warn.conf');
my ($rc, $out) = $t->test_config('warn.conf');
is($rc, 0, 'the warnings do not fail nginx -t') or diag($out);
# The line of the first line of warn.conf that contains $text.
sub line_of {
    my ($text) = @_;
    my @lines = split /\n/, $t->read_file('warn.conf');
    for my $i (0 .. $#lines) { return $i + 1 if index($lines[$i], $text) >= 0 }
    return 0;
}
my ($by_key, $by_team, $set) = map { line_of($_) } 'limit_conn by_key 1;', 'limit_conn by_team 5;', 'set $copy ';
my $plain = line_of('        listen 127.0.0.1:');
my @warns = $out =~ /^(.*\[warn\].*)$/mg;
is(scalar @warns, 3, 'three warnings: two limit_conn, one set') or diag($out);
like($out, qr/\[warn\] .*noise: "limit_conn by_key" in \S+warn\.conf:$by_key limits nothing on noise_listen servers: the key of "limit_conn_zone" in \S+warn\.conf:\d+ uses "\$noise_client_key", which is empty before the NoiseSocket handshake \(limit_conn runs first\); use "noise_limit_conn_per_key" to limit connections per client key/,
    'limit_conn keyed by $noise_client_key: file, line and what to use instead');
like($out, qr/\[warn\] .*noise: "limit_conn by_team" in \S+warn\.conf:$by_team .*uses "\$team" \(a map of a \$noise_\* variable\)/,
    'a map of a map of $noise_client_key, at stream level, inherited by the second server');
like($out, qr/\[warn\] .*noise: "set" in \S+warn\.conf:$set runs before the NoiseSocket handshake/, 'set of $noise_client_key');
unlike($out, qr/by_addr/, 'no warning for another key');
my @late = grep { /warn\.conf:(\d+)/ && $1 > $plain } @warns;
is(scalar @late, 0, 'no warning for the plain listen server') or diag(@late);

# 6. Bad input.
my @bad = (
    ['zero', 'noise_limit_conn_per_key 0;', qr/"noise_limit_conn_per_key" must be a number of connections from 1 to 4294967295, not "0" in \S+bad\.conf:\d+/],
    ['not a number', 'noise_limit_conn_per_key many;', qr/"noise_limit_conn_per_key" must be a number of connections from 1 to \d+, not "many" in \S+bad\.conf:\d+/],
    ['negative', 'noise_limit_conn_per_key -1;', qr/must be a number of connections from 1 to \d+, not "-1"/],
    ['too large', 'noise_limit_conn_per_key 99999999999;', qr/must be a number of connections from 1 to \d+, not "99999999999"/],
    ['two numbers', 'noise_limit_conn_per_key 1 2;', qr/invalid number of arguments in "noise_limit_conn_per_key" directive in \S+bad\.conf:\d+/],
    ['duplicate', 'noise_limit_conn_per_key 1; noise_limit_conn_per_key 2;', qr/"noise_limit_conn_per_key" directive is duplicate in \S+bad\.conf:\d+/],
    ['in an upstream block', 'upstream u { server 127.0.0.1:1; noise_limit_conn_per_key 1; }', qr/"noise_limit_conn_per_key" directive is not allowed here in \S+bad\.conf:\d+/],
);
for my $case (@bad) {
    my ($name, $body, $want) = @$case;
    $t->write_config("stream {\n$body\n}\n", 'bad.conf');
    my ($rc, $out) = $t->test_config('bad.conf');
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $want, "$name: says why, with file and line");
}
$t->write_config("http {\n noise_limit_conn_per_key 1;\n}\n", 'bad.conf');
($rc, $out) = $t->test_config('bad.conf');
isnt($rc, 0, 'in http: nginx -t fails');
like($out, qr/"noise_limit_conn_per_key" directive is not allowed here in \S+bad\.conf:\d+/, 'in http: not allowed');

done_testing;
