#!/usr/bin/perl
# noise_upstream_server_key by name, and fail closed in pinned groups (issue 19 item 2).
# A name pin applies to the servers configured with that name: at configuration time (a
# right key passes, a wrong key fails over to the next server, 502 when all fail), with
# least_conn, hash, random and, where nginx has it (1.31.0), least_time with inflight
# (whose notify calls pass through our wrapper) (the chosen peer is found among the group's
# round-robin peers), for IK, and at run time for `server NAME resolve` whose address a DNS server changes (a tiny
# one in Python, t/lib/dns_server.py, that the `resolver` directive points at): another key there is
# refused, the right key passes. In a group that uses pins, a server no pin applies to is
# a failed attempt with one error line, before anything connects, unless trusted keys
# vouch for it; this covers an address pin left behind when a resolved name moves and a
# pin for one name never applying to another name at the same address. An address pin
# and a name pin that disagree: the address pin wins. Bad inputs at nginx -t.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(right other gw);
$t->write_file('other.list', "$pub{other}\n", 0644);
my $dir = $t->dir;
my $resolve = $t->has('resolve');
my @balancers = (qw(bal_lc bal_hash bal_random), $t->has('least_time') ? 'bal_lt' : ());
my $least_time = $t->has('least_time') ? <<'END' : '';
    upstream bal_lt { zone bal_lt 64k; least_time first_byte inflight;
                      server localhost:%%PORT_w%%; server localhost:%%PORT_r1%%; }
END

# A DNS server answering A queries from a file (t/lib/dns_server.py), so that a test can
# move a name at run time.
sub answers { $t->write_file('dns.txt', join('', map { "$_\n" } @_), 0644) }
answers('dyn.test 127.0.0.1', 'moved.test 127.0.0.1', 'b.test 127.0.0.1');
$t->spawn($t->{python}, $t->repo . '/t/lib/dns_server.py', $t->port('dns'), "$dir/dns.txt");
$t->scripted_backend('unpinned', '', 'stall');

my $dynamic = $resolve ? <<'END' : '';
    resolver 127.0.0.1:%%PORT_dns%% valid=1s ipv6=off;
    resolver_timeout 2s;
    server { noise_listen 127.0.0.1:%%PORT_dyn%%; noise_private_key %%TESTDIR%%/right.key; return "one\n"; }
    server { noise_listen 127.0.0.2:%%PORT_dyn%%; noise_private_key %%TESTDIR%%/other.key; return "two\n"; }
    server { noise_listen 127.0.0.3:%%PORT_dyn%%; noise_private_key %%TESTDIR%%/right.key; return "three\n"; }
    upstream dyn { zone dyn 64k; server dyn.test:%%PORT_dyn%% resolve; }
    upstream moved { zone moved 64k; server moved.test:%%PORT_dyn%% resolve; }
    upstream twonames { zone twonames 64k; server b.test:%%PORT_dyn%% resolve; }
    server { listen 127.0.0.1:%%PORT_g_dyn%%; proxy_pass dyn;
             noise_upstream_server_key dyn.test:%%PORT_dyn%% $pub{right}; }
    # Only an address pin, for the address moved.test had when this was written.
    server { listen 127.0.0.1:%%PORT_g_moved%%; proxy_pass moved;
             noise_upstream_server_key 127.0.0.1:%%PORT_dyn%% $pub{right}; }
    # b.test resolves where dyn.test does: dyn.test's pin is not b.test's.
    server { listen 127.0.0.1:%%PORT_g_two%%; proxy_pass twonames;
             noise_upstream_server_key dyn.test:%%PORT_dyn%% $pub{right}; }
END
$dynamic =~ s/\$pub\{(\w+)\}/$pub{$1}/g;

$t->write_config(<<"END");
stream {
    log_format up '\$server_port \$upstream_addr \$status';
    access_log %%TESTDIR%%/logs/access.log up;
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s;
    server { noise_listen 127.0.0.1:%%PORT_r1%%; noise_private_key %%TESTDIR%%/right.key; return "r1\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_w%%; noise_private_key %%TESTDIR%%/other.key; return "w\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_x%%; noise_private_key %%TESTDIR%%/other.key; return "x\\n"; }

    upstream byname { server localhost:%%PORT_w%%; server localhost:%%PORT_r1%%; }
    upstream allwrong { server localhost:%%PORT_w%%; }
    upstream ikname { server localhost:%%PORT_r1%%; }
    upstream mixed { server 127.0.0.1:%%PORT_unpinned%%; server 127.0.0.1:%%PORT_r1%%; }
    upstream vouched { server 127.0.0.1:%%PORT_x%%; server 127.0.0.1:%%PORT_r1%%; }
    upstream conflict { server localhost:%%PORT_r1%%; }
    # Other balancers choose among round-robin peers too (in a zone or not).
    upstream bal_lc { zone bal_lc 64k; least_conn; server localhost:%%PORT_w%%; server localhost:%%PORT_r1%%; }
    upstream bal_hash { hash \$remote_port; server localhost:%%PORT_w%%; server localhost:%%PORT_r1%%; }
    upstream bal_random { zone bal_random 64k; random; server localhost:%%PORT_w%%; server localhost:%%PORT_r1%%; }
$least_time
    noise_upstream on;
    noise_upstream_private_key %%TESTDIR%%/gw.key;
    proxy_connect_timeout 3s;
    server { listen 127.0.0.1:%%PORT_g_byname%%; proxy_pass byname;
             noise_upstream_server_key localhost:%%PORT_r1%% $pub{right};
             noise_upstream_server_key localhost:%%PORT_w%% $pub{right}; }
    server { listen 127.0.0.1:%%PORT_g_allwrong%%; proxy_pass allwrong;
             noise_upstream_server_key localhost:%%PORT_w%% $pub{right}; }
    server { listen 127.0.0.1:%%PORT_g_ik%%; proxy_pass ikname;
             noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;
             noise_upstream_server_key localhost:%%PORT_r1%% $pub{right}; }
    server { listen 127.0.0.1:%%PORT_g_mixed%%; proxy_pass mixed;
             noise_upstream_server_key 127.0.0.1:%%PORT_r1%% $pub{right}; }
    server { listen 127.0.0.1:%%PORT_g_vouched%%; proxy_pass vouched;
             noise_upstream_trusted_keys %%TESTDIR%%/other.list;
             noise_upstream_server_key 127.0.0.1:%%PORT_r1%% $pub{right}; }
@{[map { "    server { listen 127.0.0.1:%%PORT_g_$_%%; proxy_pass $_;
             noise_upstream_server_key localhost:%%PORT_r1%% $pub{right};
             noise_upstream_server_key localhost:%%PORT_w%% $pub{right}; }\n" } @balancers]}
    server { listen 127.0.0.1:%%PORT_g_conflict%%; proxy_pass conflict;
             noise_upstream_server_key localhost:%%PORT_r1%% $pub{other};
             noise_upstream_server_key 127.0.0.1:%%PORT_r1%% $pub{right}; }
$dynamic}
END
$t->run;
sub g { $t->port("g_$_[0]") }
sub fetch { ($t->plain_exchange(g($_[0]), '', keep_open => 1, timeout => $_[1] // 5))[0] }
sub access_lines {
    my ($gw) = @_;
    my $p = g($gw);
    return grep { /^$p / } split /\n/, $t->read_file('logs/access.log');
}
# Polls a gateway until a session ended with 502 at the given address (nginx re-resolves
# once the answer's validity has passed).
sub moved_to {
    my ($gw, $addr, $port) = @_;
    fetch($gw);
    return grep { / \Q$addr:$port\E 502$/ } access_lines($gw);
}
my ($r1, $w, $unpinned) = map { $t->port($_) } qw(r1 w unpinned);

# Name pins at configuration time: `server localhost:PORT` gets the pin for localhost:PORT.
{
    my $mark = $t->error_log_mark;
    my @got = map { fetch('byname') } 1 .. 6;
    is_deeply(\@got, [("r1\n") x 6], 'name pin: every session ends at the server with the right key');
    like($t->error_log_since($mark),
        qr/\[error\].*NoiseSocket handshake with upstream 127\.0\.0\.1:$w failed: server key mismatch/,
        'name pin: the server with another key is refused, one error line, next server tried');
    $mark = $t->error_log_mark;
    is(fetch('allwrong'), '', 'name pin, every server wrong: nothing gets through');
    ok($t->wait_for(3, sub { grep { / 502$/ } access_lines('allwrong') }), 'name pin, every server wrong: 502');
    for my $b (@balancers) {
        $mark = $t->error_log_mark;
        # Until the balancer has tried the other server once (then max_fails parks it).
        my @got;
        for (1 .. 12) {
            push @got, fetch($b);
            last if $t->error_log_since($mark) =~ /upstream 127\.0\.0\.1:$w failed/;
        }
        is_deeply(\@got, [("r1\n") x @got], "name pin with $b: every session ends at the right key");
        like($t->error_log_since($mark),
            qr/\[error\].*NoiseSocket handshake with upstream 127\.0\.0\.1:$w failed: server key mismatch/,
            "name pin with $b: the other key is refused");
    }
    SKIP: {
        skip $t->lacks_reason('least_time'), 2 unless grep { $_ eq 'bal_lt' } @balancers;
    }
    is(fetch('ik'), "r1\n", 'IK with a name pin: nginx -t accepts it, the key is the pinned one');
    is(fetch('conflict'), "r1\n", 'address pin and name pin disagree: the address pin wins');
}

# A pinned group with a server no pin applies to: a failed attempt before connecting.
{
    my $mark = $t->error_log_mark;
    my $probes = $t->count_of('unpinned');    # the harness's own wait for the port
    my @got = map { fetch('mixed') } 1 .. 6;
    is_deeply(\@got, [("r1\n") x 6], 'pinned group: every session ends at the pinned server');
    my $since = $t->error_log_since($mark);
    like($since,
        qr/\[error\].*noise: upstream "mixed" server "127\.0\.0\.1:$unpinned" at 127\.0\.0\.1:$unpinned: no "noise_upstream_server_key" applies and the group uses pins and no "noise_upstream_trusted_keys" is set; refused: add "noise_upstream_server_key 127\.0\.0\.1:$unpinned KEY"/,
        'pinned group: the unpinned server gets one error line saying what to add');
    is($t->count_of('unpinned'), $probes, 'pinned group: nothing connects to the unpinned server');
    my %seen;
    $seen{fetch('vouched')}++ for 1 .. 6;
    ok($seen{"x\n"}, 'pinned group with trusted keys: a trusted unpinned server is accepted');
}

SKIP: {
    skip $t->lacks_reason('resolve') . ': `server ... resolve` cannot be tested', 9 unless $resolve;
    my $dyn = $t->port('dyn');
    # The first resolution happens after start; wait for it.
    ok($t->wait_for(10, sub { fetch('dyn') eq "one\n" }), 'resolve + name pin: the right key passes');
    is(fetch('moved'), "one\n", 'resolve + address pin: the pinned address passes');
    my $mark = $t->error_log_mark;
    is(fetch('two'), '', 'two names, one address: the pin of one name does not apply to the other');
    like($t->error_log_since($mark),
        qr/\[error\].*noise: upstream "twonames" server "b\.test:$dyn" at 127\.0\.0\.1:$dyn: no "noise_upstream_server_key" applies.*add "noise_upstream_server_key b\.test:$dyn KEY" \(or 127\.0\.0\.1:$dyn\)/,
        'two names, one address: one error line naming the name and the address');

    # Both names move to an address served with another key.
    answers('dyn.test 127.0.0.2', 'moved.test 127.0.0.2', 'b.test 127.0.0.1');
    ok($t->wait_for(15, sub { moved_to('dyn', '127.0.0.2', $dyn) }),
        'resolve + name pin: a new address with another key is refused (502)');
    $mark = $t->error_log_mark;
    is(fetch('dyn'), '', 'resolve + name pin: nothing gets through from the wrong key');
    ok($t->wait_for(15, sub { moved_to('moved', '127.0.0.2', $dyn) }),
        'resolve + address pin left behind: the new address is a failed attempt (502)');
    like($t->error_log_since($mark),
        qr/\[error\].*noise: upstream "moved" server "moved\.test:$dyn" at 127\.0\.0\.2:$dyn: no "noise_upstream_server_key" applies/,
        'resolve + address pin left behind: one error line naming the server');

    # Moved again, to a server with the right key.
    answers('dyn.test 127.0.0.3', 'moved.test 127.0.0.2', 'b.test 127.0.0.1');
    ok($t->wait_for(15, sub { fetch('dyn') eq "three\n" }), 'resolve + name pin: the right key at the new address passes');
}
$t->stop;

# Bad inputs at nginx -t, each with the file and line.
sub conf_error {
    my ($line, $name) = @_;
    $t->write_config(<<"END", $name);
stream {
    server { listen 127.0.0.1:%%PORT_bad%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_r1%%;
             noise_upstream_private_key %%TESTDIR%%/gw.key;
             $line
    }
}
END
    my ($rc, $out) = $t->test_config($name);
    my @lines = split /\n/, $t->read_file($name);
    my ($n) = grep { index($lines[$_ - 1], $line) >= 0 } 1 .. @lines;
    return ($rc, $out, "$dir/$name:$n");
}
for my $case (
    ["backend.example $pub{right}", qr/no port in "backend\.example"/, 'no port'],
    ["backend.example:99999 $pub{right}", qr/invalid server "backend\.example:99999": expected ADDRESS:PORT or NAME:PORT/, 'port out of range'],
    ["back/end:7443 $pub{right}", qr/invalid server "back\/end:7443"/, 'not a name'],
    ["nosuch.invalid:7443 $pub{right}", qr/cannot resolve "nosuch\.invalid:7443"/, 'unknown name'],
) {
    my ($line, $re, $what) = @$case;
    my ($rc, $out, $at) = conf_error("noise_upstream_server_key $line;", 'bad.conf');
    ok($rc, "nginx -t refuses a pin: $what");
    like($out, qr/\[emerg\].*$re.* in \Q$at\E/, "nginx -t: $what, with the file and line");
}

done_testing;
