#!/usr/bin/perl
# What a client that stops reading costs the server, for plain TCP, TLS 1.3 and NoiseSocket
# in one run: N clients connect to a server whose back end writes without end, stop reading,
# and the worker's RSS growth per connection is reported once the buffers have filled.
#   scripts/bench/slow-readers.pl [N]     (default 300; needs scripts/build.sh first)
# Clients: plain Perl sockets, `openssl s_client`, the `noisesocket` CLI, each with its
# output going to a pipe nobody reads.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../../t/lib";
use NoiseTest;
use Fcntl qw(F_SETFD);
use Time::HiRes qw(sleep);

my $n = shift // 300;

# One fresh nginx (one worker) per kind: memory freed by one kind would otherwise be reused
# by the next and hide its cost.
my %servers = (
    plain => 'server { listen 127.0.0.1:%%PORT_srv%%; proxy_pass 127.0.0.1:%%PORT_flood%%; }',
    tls => 'server { listen 127.0.0.1:%%PORT_srv%% ssl; ssl_certificate %%TESTDIR%%/tls.crt; '
        . 'ssl_certificate_key %%TESTDIR%%/tls.key; ssl_protocols TLSv1.3; proxy_pass 127.0.0.1:%%PORT_flood%%; }',
    noise => 'server { noise_listen 127.0.0.1:%%PORT_srv%%; noise_private_key %%TESTDIR%%/server.key; '
        . 'proxy_pass 127.0.0.1:%%PORT_flood%%; }',
);

sub start {
    my ($kind) = @_;
    my $t = NoiseTest->new;
    $t->keygen('server');
    $t->keygen('client');
    my $dir = $t->dir;
    system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=x "
        . "-keyout $dir/tls.key -out $dir/tls.crt >/dev/null 2>&1") == 0 or die "openssl req failed";
    $t->source_backend('flood');
    $t->write_config("worker_processes 1;\nworker_rlimit_nofile 8192;\n"
        . "stream {\n    proxy_timeout 1h;\n    $servers{$kind}\n}\n");
    my $conf = $t->read_file('nginx.conf') =~ s/worker_connections 1024/worker_connections 4096/r;
    $t->write_file('nginx.conf', $conf, 0644);
    $t->run;
    return $t;
}

sub stalled_client {
    my ($t, $kind, $port) = @_;
    my $pid = $t->fork_helper;
    return $pid if $pid;
    pipe(my $r, my $w) or die;    # nobody reads $r: the client blocks once it is full
    fcntl($r, F_SETFD, 0) or die;  # ... but $r stays open across exec (no EPIPE)
    open STDOUT, '>&', $w or die;
    if ($kind eq 'plain') {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or exit 1;
        sleep 3600;
    }
    pipe(my $in, my $keep) or die;    # stdin stays open
    fcntl($keep, F_SETFD, 0) or die;
    open STDIN, '<&', $in or die;
    exec 'openssl', 's_client', '-quiet', '-connect', "127.0.0.1:$port" if $kind eq 'tls';
    exec $t->cli, 'connect', "127.0.0.1:$port", '--key', $t->dir . '/client.key';
}

my %kib;
for my $kind (qw(plain tls noise)) {
    my $t = start($kind);
    my ($worker) = $t->worker_pids;
    sleep 1;
    my $rss0 = $t->rss_kb($worker);
    my @pids = map { stalled_client($t, $kind, $t->port('srv')) } 1 .. $n;
    sleep 8;    # handshakes done, every buffer on the way full
    my $rss1 = $t->rss_kb($worker);
    $kib{$kind} = ($rss1 - $rss0) / $n;
    printf "%-6s %d stalled readers: worker RSS +%d KiB, %.1f KiB per connection\n",
        $kind, $n, $rss1 - $rss0, $kib{$kind};
    undef $t;    # stops nginx, kills the clients
}
printf "noise / tls = %.2f, noise / plain = %.2f\n", $kib{noise} / $kib{tls}, $kib{noise} / ($kib{plain} || 1);
