#!/usr/bin/perl
# noise_auth_request under a flood of fresh self-made keys: N IK handshakes, each with a new
# random key (so every one misses the zone), THREADS at a time, against a miss=lookup server
# whose authority answers after 2 s; reports how many got in or were refused and the most
# lookups the authority saw open at once, against the cap (noise_auth_request_concurrency
# per worker x workers).
#   scripts/bench/auth-flood.pl [N] [THREADS] [CAP]    (default 10000 200 64; scripts/build.sh
#   and scripts/python-env.sh first)

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../t/lib";
use NoiseTest;

my ($n, $threads, $cap) = (shift // 10000, shift // 200, shift // 64);
my $t = NoiseTest->new;
my $dir = $t->dir;
my $server_pub = $t->keygen('server');
my $auth = $t->port('auth');
$t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', $auth, $dir);
$t->wait_port($auth) or die "the authority did not start";
$t->write_config(<<"END");
worker_rlimit_nofile 8192;
stream {
    noise_keys_zone devices 64m;
    server {
        noise_listen 127.0.0.1:%%PORT_srv%% backlog=4096;
        noise_private_key %%TESTDIR%%/server.key;
        noise_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;
        noise_keys zone=devices miss=lookup;
        noise_auth_request http://127.0.0.1:$auth/slow;
        noise_auth_request_concurrency $cap;
        return "in\\n";
    }
}
END
my $conf = $t->read_file('nginx.conf') =~ s/worker_connections 1024/worker_connections 4096/r;
$t->write_file('nginx.conf', $conf, 0644);
$t->run;
my $r = $t->run_cmd([$t->{python}, "$FindBin::Bin/auth_flood_client.py", $t->port('srv'), $server_pub, $n, $threads], '', 3600);
print "flood: $n handshakes with fresh keys, $threads at a time, authority answering after 2 s\n";
print "client: $r->{out}$r->{err}";
my $max = $t->read_file('max');
chomp $max;
my $workers = $t->workers;
printf "authority: at most %s lookups open at once (cap %d per worker x %d workers = %d)\n",
    $max, $cap, $workers, $cap * $workers;
$t->stop;
