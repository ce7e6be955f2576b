#!/usr/bin/perl
# Fail closed whatever nginx does with sockets: `reuseport` (one socket per worker), several
# workers, a reload that changes the worker count, a binary upgrade (USR2, then QUIT to the
# old master). On every NoiseSocket address, plaintext probes are closed without reaching
# the back end and genuine clients all get through; a plain `listen` in the same server
# stays plain; `proxy_protocol` on a `noise_listen` socket still reads its header first.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen('server');
my $client_pub = $t->keygen('client');
$t->write_file('trusted', "$client_pub\n", 0644);
$t->scripted_backend('sink', "BACKEND\n");
my $dir = $t->dir;

my $template = <<'END';
worker_processes WORKERS;
stream {
    log_format noise '$pid $server_port $status [$noise_client_key] $proxy_protocol_addr';
    access_log %%TESTDIR%%/logs/access.log noise;
    noise_private_key %%TESTDIR%%/server.key;
    noise_handshake_timeout 5s;
    proxy_half_close on;
    server {
        noise_listen 127.0.0.1:%%PORT_rp%% reuseport;
        noise_trusted_keys %%TESTDIR%%/trusted;
        proxy_pass 127.0.0.1:%%PORT_sink%%;
    }
    server {
        listen 127.0.0.1:%%PORT_plain%% reuseport;
        noise_listen 127.0.0.1:%%PORT_mixed%% reuseport;
        proxy_pass 127.0.0.1:%%PORT_sink%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_pp%% reuseport proxy_protocol;
        proxy_pass 127.0.0.1:%%PORT_sink%%;
    }
    server {
        listen 127.0.0.1:%%PORT_front%%;
        proxy_pass 127.0.0.1:%%PORT_pp%%;
        proxy_protocol on;
    }
}
END
sub config { $t->write_config($template =~ s/WORKERS/$_[0]/r) }

my %port = map { $_ => $t->port($_) } qw(rp mixed plain pp front);
my @key = ('--key', "$dir/client.key");

# The CLI as a client, with a short timeout: a broken gate must fail the test, not hang it.
sub client {
    my ($port, $input, @opts) = @_;
    return $t->run_cmd([$t->cli, 'connect', "127.0.0.1:$port", '-N', @opts], $input, 10);
}

# One round of probes and clients against the running nginx.
sub round {
    my ($label, $workers) = @_;
    my @pids = $t->worker_pids;
    is(scalar @pids, $workers, "$label: $workers workers");
    my $log_mark = length $t->read_file('logs/access.log');
    my $err_mark = $t->error_log_mark;
    my $backend = $t->count_of('sink');
    my $received = length $t->read_file('sink.received');

    # Plaintext on every NoiseSocket address: closed, nothing relayed.
    my ($answered, $open) = (0, 0);
    for my $name (qw(rp mixed)) {
        for my $i (1 .. 24) {
            my ($got, $closed) = $t->raw_exchange($port{$name}, "PLAINTEXT PROBE $i\r\n\r\n",
                half_close => 1, timeout => 5);
            $answered++ if length $got;
            $open++ unless $closed;
        }
    }
    is($answered, 0, "$label: no plaintext probe got an answer");
    is($open, 0, "$label: every plaintext probe was closed");
    is($t->count_of('sink'), $backend, "$label: no probe opened a back-end connection");
    unlike(substr($t->read_file('sink.received'), $received), qr/PROBE/, "$label: no probe byte reached the back end");

    # Genuine clients: all through.
    my %ok;
    for my $name (qw(rp mixed)) {
        for my $i (1 .. 12) {
            my $r = client($port{$name}, "hello $i\n", @key);
            $ok{$name}++ if $r->{out} eq "BACKEND\n";
        }
    }
    is($ok{rp} // 0, 12, "$label: 12 of 12 clients through on reuseport noise_listen");
    is($ok{mixed} // 0, 12, "$label: 12 of 12 clients through on the mixed server");

    # A stranger's key on the trusted-keys server: refused.
    $t->keygen('stranger');
    my $r = client($port{rp}, "x\n", '--key', "$dir/stranger.key");
    is($r->{out}, '', "$label: an untrusted client gets nothing");

    # The plain listen of the mixed server stays plain.
    my ($got) = $t->plain_exchange($port{plain}, "plain\n", timeout => 5);
    is($got, "BACKEND\n", "$label: plain listen beside noise_listen is plain");

    # PROXY protocol header, then NoiseSocket, on one socket.
    $r = client($port{front}, "via proxy protocol\n", @key);
    is($r->{out}, "BACKEND\n", "$label: proxy_protocol + noise_listen");

    sleep 0.3;
    my @lines = split /\n/, substr($t->read_file('logs/access.log'), $log_mark);
    my %by_port;
    push @{$by_port{(split / /)[1]}}, $_ for @lines;
    my @rp = @{$by_port{$port{rp}} // []};
    my @authed = grep { /\[\Q$client_pub\E\]/ } @rp;
    is(scalar @authed, 12, "$label: 12 authenticated sessions logged on the reuseport server");
    is(scalar(grep { / 200 \[\]/ } @rp), 0, "$label: no unauthenticated session logged as a success");
    my %pids = map { (split / /)[0] => 1 } @authed, @{$by_port{$port{mixed}} // []};
    ok(keys %pids >= 2, "$label: clients were served by " . scalar(keys %pids) . " workers");
    like($by_port{$port{pp}}[-1] // '', qr/ 200 \[\Q$client_pub\E\] 127\.0\.0\.1$/, "$label: PROXY header read, then the handshake");
    unlike($t->error_log_since($err_mark), qr/\[(crit|alert|emerg)\]/, "$label: nothing critical logged");
}

config(2);
$t->run;
round('2 workers', 2);

config(4);
$t->reload;
round('reload to 4 workers', 4);

# Binary upgrade: the new master inherits the sockets (one per worker with reuseport).
my $old_master = $t->master_pid;
kill 'USR2', $old_master;
ok($t->wait_for(10, sub { -s "$dir/logs/nginx.pid.oldbin" && ($t->master_pid || $old_master) != $old_master }),
    'USR2: a new master started');
ok($t->wait_for(10, sub { ($t->master_pid || $old_master) != $old_master && $t->worker_pids == 4 }),
    'USR2: the new master has its workers');
$t->{master} = $t->master_pid;    # the one to stop at the end
kill 'QUIT', $old_master;
ok($t->wait_for(10, sub { !kill 0, $old_master }), 'QUIT: the old master is gone');
round('after a binary upgrade', 4);

config(2);
$t->reload;
round('reload back to 2 workers', 2);

unlike($t->error_log, qr/\[(crit|alert|emerg)\]/, 'no crit, alert or emerg line');
done_testing;
