#!/usr/bin/perl
# Preread phase handlers see plaintext on NoiseSocket connections: `openssl s_client
# -servername example.org` through a noise_upstream hop into a noise_listen server with
# ssl_preread logs the server name (nginx 1.25.5+ would show ssl_preread the ciphertext
# otherwise); what preread read is still proxied; plain ssl_preread servers are unchanged;
# a preread that never completes fills the buffer and is closed.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $configure = $t->run_cmd([$t->{nginx}, '-V'])->{err};
plan skip_all => 'nginx has no ssl_preread module' unless $configure =~ /--with-stream_ssl_preread_module/;
my %pub = map { $_ => $t->keygen($_) } qw(server gateway client);
$t->echo_backend('echo');
my $dir = $t->dir;
$t->write_config(<<'END');
stream {
    log_format preread '$server_port|$ssl_preread_server_name|$ssl_preread_protocol|$noise_protocol';
    access_log %%TESTDIR%%/logs/preread.log preread;
    server {
        listen 127.0.0.1:%%PORT_gateway%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/gateway.key;
        noise_upstream_server_key 127.0.0.1:%%PORT_noise%% %%TESTDIR%%/server.pub;
        proxy_pass 127.0.0.1:%%PORT_noise%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_private_key %%TESTDIR%%/server.key;
        ssl_preread on;
        preread_timeout 3s;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        listen 127.0.0.1:%%PORT_plain%%;
        ssl_preread on;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
    }
}
END
$t->run;

# s_client's ClientHello through the gateway: nginx wraps it in NoiseSocket, the noise_listen
# server decrypts it and ssl_preread parses it. (No TLS server answers: s_client fails.)
sub s_client {
    my ($port) = @_;
    $t->run_cmd(['openssl', 's_client', '-connect', "127.0.0.1:$port", '-servername', 'example.org',
        '-tls1_3'], '', 10);
}
s_client($t->port('gateway'));
my $noise = $t->port('noise');
$t->wait_for(5, sub { $t->read_file('logs/preread.log') =~ /^$noise\|/m });
my $log = $t->read_file('logs/preread.log');
like($log, qr/^$noise\|example\.org\|TLSv1\.\d\|Noise_XX_25519_ChaChaPoly_BLAKE2s$/m,
    'ssl_preread on a noise_listen server sees the ClientHello in plaintext');

# A plain ssl_preread server is unchanged (nginx's own peeking checker).
s_client($t->port('plain'));
my $plain = $t->port('plain');
$t->wait_for(5, sub { $t->read_file('logs/preread.log') =~ /^$plain\|/m });
like($t->read_file('logs/preread.log'), qr/^$plain\|example\.org\|TLSv1\.\d\|-$/m, 'plain ssl_preread: as before');

# What preread read is not lost: a NoiseSocket client that does not speak TLS gets its bytes
# echoed back (ssl_preread gives up on them; the proxy sends them on first).
my $r = $t->noise_client($noise, "not a ClientHello\n", '--key', "$dir/client.key",
    '--remote-key', "$dir/server.pub");
is($r->{out}, "not a ClientHello\n", 'bytes read by preread are proxied') or diag($r->{err});
my $bulk = join '', map { chr(32 + $_ % 90) } 1 .. 300_000;
$r = $t->noise_client($noise, $bulk, '--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
is(length $r->{out}, length $bulk, 'a bulk transfer after preread: all bytes');
ok($r->{out} eq $bulk, 'a bulk transfer after preread: intact');

# Bad input: a TLS record header that promises more than the preread buffer holds, then
# silence: "preread buffer full" or the preread timeout, a clean close, no worker lost.
my $workers = $t->worker_set;
my $mark = $t->error_log_mark;
my $hello = "\x16\x03\x01\x40\x00" . "\x01\x00\x3f\xfc" . ("\x00" x 20000);
$r = $t->noise_client($noise, $hello, '--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
is($r->{out}, '', 'an endless ClientHello gets nothing back');
$t->wait_for(6, sub { $t->error_log_since($mark) =~ /preread buffer full|finalize|closed/ });
like($t->error_log_since($mark), qr/preread buffer full/, 'nginx says the preread buffer is full');
is($t->worker_set, $workers, 'no worker died');
unlike($t->error_log, qr/\[(alert|crit|emerg)\]/, 'no alert or crit');

done_testing;
