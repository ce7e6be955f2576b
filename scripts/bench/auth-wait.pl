#!/usr/bin/perl
# What a handshake waiting for its authority (noise_auth_request) does to everything else on
# the same worker: one worker, so that every connection shares it. Phases (the client,
# scripts/bench/auth_wait_client.py, says what each measures): 200 other handshakes while 64
# lookups wait 2 s for their answer; the authority down: fresh keys refused, established
# sessions echoing on, other handshakes served; an authority that never answers: refused
# within noise_auth_request_timeout.
#   scripts/bench/auth-wait.pl    (scripts/build.sh and scripts/python-env.sh first)

use strict;
use warnings;
use FindBin;
use IO::Socket::INET;
use lib "$FindBin::Bin/../../t/lib";
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
my $server_pub = $t->keygen('server');
my $trusted_pub = $t->keygen('trusted');
$t->write_file('trusted.list', "$trusted_pub\n", 0644);
my $auth = $t->port('auth');
my $silent = $t->port('silentauth');
# An authority that accepts (the kernel does, into the backlog) and never answers.
my $hole = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$silent", Listen => 1024, ReuseAddr => 1)
    or die "silent authority: $!";
$t->echo_backend('echo');
$t->write_config(<<"END");
worker_processes 1;
worker_rlimit_nofile 8192;
stream {
    noise_keys_zone devices 16m;
    noise_private_key %%TESTDIR%%/server.key;
    noise_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s Noise_XX_25519_ChaChaPoly_BLAKE2s;
    server { noise_listen 127.0.0.1:%%PORT_slow%% backlog=4096; noise_keys zone=devices miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/slow; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_other%% backlog=4096; noise_trusted_keys %%TESTDIR%%/trusted.list;
             return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_est%% backlog=4096; noise_keys zone=devices miss=lookup;
             noise_auth_request http://127.0.0.1:$auth/allow; proxy_pass 127.0.0.1:%%PORT_echo%%; }
    server { noise_listen 127.0.0.1:%%PORT_silent%% backlog=4096; noise_keys zone=devices miss=lookup;
             noise_auth_request http://127.0.0.1:$silent/; noise_auth_request_timeout 1s; return "in\\n"; }
}
END
my $conf = $t->read_file('nginx.conf') =~ s/worker_connections 1024/worker_connections 4096/r;
$t->write_file('nginx.conf', $conf, 0644);
$t->run;
my $ports = join ',', map { $t->port($_) } qw(slow other est silent auth);
my $r = $t->run_cmd([$t->{python}, "$FindBin::Bin/auth_wait_client.py", $server_pub,
    $t->read_file('trusted.key') =~ s/\s+//gr, $ports, $dir, $t->repo . '/t/lib/auth_authority.py'], '', 600);
print $r->{out}, $r->{err};
my @ours = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $t->error_log;
print "nginx: ", scalar(@ours), " alert lines\n";
$t->stop;
