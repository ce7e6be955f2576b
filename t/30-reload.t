#!/usr/bin/perl
# `nginx -s reload` with open NoiseSocket connections: they finish on the old worker with
# the old session; new connections get the new configuration (a new server key).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $old_pub = $t->keygen('old');
my $new_pub = $t->keygen('new');
$t->keygen('client');
$t->echo_backend('echo');
my $dir = $t->dir;

my $conf = <<'END';
stream {
    server {
        noise_listen 127.0.0.1:%%PORT_main%%;
        noise_private_key %%TESTDIR%%/KEY.key;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
}
END
$t->write_config($conf =~ s/KEY/old/r);
$t->run;
my $port = $t->port('main');
my @client = ($t->cli, 'connect', "127.0.0.1:$port", '-N', '--key', "$dir/client.key", '-v');

my $r = $t->noise_client($port, "before\n", '--key', "$dir/client.key", '-v');
like($r->{err}, qr/^remote_key=\Q$old_pub\E$/m, 'before reload: old key');

# A long-lived connection: writes, waits across the reload, writes again.
my $fifo = "$dir/slow.out";
my $pid = fork // die;
if (!$pid) {
    open STDOUT, '>', $fifo or die;
    open STDERR, '>', "$fifo.err" or die;
    open my $in, '|-', @client or die;
    $in->autoflush(1);
    print $in "first\n";
    sleep 2;
    print $in "second\n";
    close $in;
    exit($? >> 8);
}
sleep 0.7;
my @old_workers = $t->worker_pids;
$t->write_config($conf =~ s/KEY/new/r);
my @new = $t->reload;
ok(@new, 'reloaded: new worker ' . join(',', @new));

$r = $t->noise_client($port, "after\n", '--key', "$dir/client.key", '-v');
like($r->{err}, qr/^remote_key=\Q$new_pub\E$/m, 'after reload: new connections use the new key');
is($r->{out}, "after\n", 'after reload: data flows');

waitpid($pid, 0);
is($? >> 8, 0, 'open connection finished cleanly across the reload');
is($t->read_file($fifo), "first\nsecond\n", 'open connection kept its data flowing');
like($t->read_file("$fifo.err"), qr/^remote_key=\Q$old_pub\E$/m, 'open connection used the old key');
ok($t->wait_for(5, sub { !grep { kill 0, $_ } @old_workers }), 'old workers exit once their connection is done');

# A reload that drops the module: the proxy module's `proxy_pass` handler, which the module
# wraps while it is loaded, must be nginx's own again (a second reload parses proxy_pass
# with it after our .so may have been unloaded).
my $plain = $t->preload . $t->substitute(<<'END');
daemon on;
master_process on;
worker_processes 2;
pid %%TESTDIR%%/logs/nginx.pid;
error_log %%TESTDIR%%/logs/error.log info;
events { worker_connections 1024; }
stream { server { listen 127.0.0.1:%%PORT_plainonly%%; proxy_pass 127.0.0.1:%%PORT_echo%%; proxy_half_close on; } }
END
$t->{expect_workers} = 2;
$t->write_file('nginx.conf', $plain, 0644);
$t->reload;
$t->reload;
my ($echo) = $t->plain_exchange($t->port('plainonly'), "without the module\n", timeout => 5);
is($echo, "without the module\n", 'reloads without the module: proxy_pass still works');
$t->write_config($conf =~ s/KEY/new/r);
$t->reload;
$r = $t->noise_client($port, "back\n", '--key', "$dir/client.key", '-v');
is($r->{out}, "back\n", 'and loading it again works');
unlike($t->error_log, qr/\[(error|crit|alert|emerg)\]/, 'no errors');
done_testing;
