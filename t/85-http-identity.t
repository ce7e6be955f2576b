#!/usr/bin/perl
# The client's NoiseSocket identity in http: stream noise_listen -> pass -> http, where
# $noise_client_key, $noise_protocol, $noise_handshake_hash and $noise_server_key work in
# `return`, `map`, `proxy_set_header` and the access log. Two clients with different keys,
# at the same time, each with several requests on one keep-alive connection, each see
# their own; a plain http request and a plain stream `listen` passed to http see empty
# values.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
plan skip_all => $t->lacks_reason('pass') unless $t->has('pass');
my %pub = map { $_ => $t->keygen($_) } qw(server alice bob);
my $dir = $t->dir;
$t->write_config(<<'END');
stream {
    noise_private_key %%TESTDIR%%/server.key;
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        pass 127.0.0.1:%%PORT_http%%;
    }
    server {
        listen 127.0.0.1:%%PORT_plain%%;
        pass 127.0.0.1:%%PORT_http%%;
    }
H2_STREAM}
http {
    log_format who '$request_uri|$noise_client_key|$noise_protocol';
    access_log %%TESTDIR%%/logs/http.log who;
    map $noise_client_key $who {
        default  "stranger";
        ""       "nobody";
        ALICE    "alice";
    }
    server {
        listen 127.0.0.1:%%PORT_http%%;
        location /id {
            return 200 "$request_uri key=$noise_client_key proto=$noise_protocol hash=$noise_handshake_hash server=$noise_server_key who=$who\n";
        }
        location /proxied {
            proxy_set_header X-Noise-Client-Key $noise_client_key;
            proxy_pass http://127.0.0.1:%%PORT_http%%/echo-header;
        }
        location /echo-header {
            return 200 "header=$http_x_noise_client_key\n";
        }
    }
H2_HTTP}
END
# HTTP/2 (h2c, prior knowledge) from curl through a noise_upstream gateway, when nginx has
# http_v2 and curl speaks HTTP/2.
my $configure = $t->run_cmd([$t->{nginx}, '-V'])->{err};
my $curl = $t->run_cmd(['curl', '--version'])->{out} // '';
my $h2 = $configure =~ /--with-http_v2_module/ && $curl =~ /\bHTTP2\b/;
my $h2_stream = $h2 ? <<'END' : '';
    server {
        listen 127.0.0.1:%%PORT_h2gateway%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/alice.key;
        noise_upstream_server_key 127.0.0.1:%%PORT_h2noise%% %%TESTDIR%%/server.pub;
        proxy_pass 127.0.0.1:%%PORT_h2noise%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_h2noise%%;
        pass 127.0.0.1:%%PORT_h2%%;
    }
END
my $h2_http = $h2 ? <<'END' : '';
    server {
        listen 127.0.0.1:%%PORT_h2%%;
        http2 on;
        location /id {
            return 200 "$server_protocol key=$noise_client_key proto=$noise_protocol\n";
        }
    }
END
my $text = $t->read_file('nginx.conf') =~ s/H2_STREAM/$h2_stream/r =~ s/H2_HTTP/$h2_http/r;
$t->write_file('nginx.conf', $t->substitute($text), 0644);
# map needs the key literally: put Alice's in place of the placeholder.
my $conf = $t->read_file('nginx.conf') =~ s/ALICE/"$pub{alice}"/r;
$t->write_file('nginx.conf', $conf, 0644);
$t->run;

my $noise = $t->port('noise');
my @server = ('--remote-key', "$dir/server.pub");

# One keep-alive connection with $n pipelined requests; the last one closes.
sub requests {
    my ($tag, $n) = @_;
    my $out = '';
    for my $i (1 .. $n) {
        my $close = $i == $n ? "Connection: close\r\n" : '';
        $out .= "GET /id/$tag/$i HTTP/1.1\r\nHost: x\r\n$close\r\n";
    }
    return $out;
}

# Alice and Bob at the same time (Bob in a child process), five requests each.
my $bob_file = "$dir/bob.out";
my $pid = fork // die "fork: $!";
if (!$pid) {
    my $r = $t->python_client($noise, requests('bob', 5), '--key', "$dir/bob.key", @server, '--keep-open');
    open my $fh, '>', $bob_file or die;
    print $fh $r->{out};
    close $fh;
    $t->{owner} = 0;    # the parent cleans up
    exit 0;
}
my $alice = $t->python_client($noise, requests('alice', 5), '--key', "$dir/alice.key", @server, '--keep-open');
waitpid($pid, 0);
my $bob = $t->read_file('bob.out');

my @alice = $alice->{out} =~ m{(/id/alice/\d key=\S* proto=\S* hash=\S* server=\S* who=\S+)}g;
my @bob = $bob =~ m{(/id/bob/\d key=\S* proto=\S* hash=\S* server=\S* who=\S+)}g;
is(scalar @alice, 5, 'alice: five responses on one keep-alive connection') or diag($alice->{err});
is(scalar @bob, 5, 'bob: five responses on one keep-alive connection');
is(scalar(grep { /key=\Q$pub{alice}\E / } @alice), 5, 'alice sees her key in every response');
is(scalar(grep { /key=\Q$pub{bob}\E / } @bob), 5, 'bob sees his key in every response');
ok(!grep({ /\Q$pub{bob}\E/ } @alice) && !grep({ /\Q$pub{alice}\E/ } @bob), 'nobody sees the other');
is(scalar(grep { /proto=Noise_XX_25519_ChaChaPoly_BLAKE2s / } @alice, @bob), 10, '$noise_protocol');
my %hashes = map { /hash=([0-9a-f]{64}) / ? ($1 => 1) : () } @alice, @bob;
is(scalar keys %hashes, 2, 'one handshake hash per connection, 64 hex digits');
is(scalar(grep { /server=\Q$pub{server}\E / } @alice), 5, '$noise_server_key: the key that served');
is(scalar(grep { /who=alice$/ } @alice), 5, 'map on $noise_client_key: alice');
is(scalar(grep { /who=stranger$/ } @bob), 5, 'map on $noise_client_key: bob is a stranger');

# proxy_set_header carries the identity to a back end.
my $r = $t->python_client($noise, "GET /proxied HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    '--key', "$dir/bob.key", @server, '--keep-open');
like($r->{out}, qr/header=\Q$pub{bob}\E\n/, 'proxy_set_header X-Noise-Client-Key');

# The access log has each request with its own key.
$t->wait_for(5, sub { () = $t->read_file('logs/http.log') =~ /\n/g; });
my $log = $t->read_file('logs/http.log');
is(scalar(() = $log =~ m{^/id/alice/\d\|\Q$pub{alice}\E\|Noise_XX}mg), 5, 'access log: alice');
is(scalar(() = $log =~ m{^/id/bob/\d\|\Q$pub{bob}\E\|Noise_XX}mg), 5, 'access log: bob');

# Not NoiseSocket: a plain stream listen passed to http, and plain http: empty values.
my ($got) = $t->plain_exchange($t->port('plain'), "GET /id/plain HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 3);
like($got, qr{/id/plain key= proto= hash= server= who=nobody}, 'plain stream listen + pass: empty');
($got) = $t->plain_exchange($t->port('http'), "GET /id/direct HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 3);
like($got, qr{/id/direct key= proto= hash= server= who=nobody}, 'plain http: empty');
($got) = $t->plain_exchange($t->port('http'), "GET /proxied HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 3);
like($got, qr{header=\n}, 'plain http: no identity header');

SKIP: {
    skip 'nginx without http_v2 or curl without HTTP/2', 2 unless $h2;
    my $url = 'http://127.0.0.1:' . $t->port('h2gateway') . '/id/h2';
    # (curl 7.88 sends one h2c prior-knowledge request per connection: two connections.)
    my $out = join '', map { $t->run_cmd(['curl', '-s', '--http2-prior-knowledge', "$url/$_"], '', 20)->{out} } 1, 2;
    my @lines = split /\n/, $out;
    is(scalar(grep { /^HTTP\/2\.0 key=\Q$pub{alice}\E proto=Noise_XX_25519_ChaChaPoly_BLAKE2s$/ } @lines), 2,
        'HTTP/2 requests see the client key') or diag($out);
    ($got) = $t->plain_exchange($t->port('h2'), "GET /id/plain HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 3);
    like($got, qr{ key= proto=\n}, 'plain request to the h2 server: empty');
}

# Bad input: garbage on the noise port, then everything still works.
my $workers = $t->worker_set;
$t->raw_exchange($noise, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout => 2);
$r = $t->python_client($noise, requests('again', 1), '--key', "$dir/alice.key", @server, '--keep-open');
like($r->{out}, qr{/id/again/1 key=\Q$pub{alice}\E }, 'after a plaintext probe: identity still right');
is($t->worker_set, $workers, 'no worker died');
unlike($t->error_log, qr/\[(alert|crit|emerg)\]/, 'no alert or crit');

done_testing;
