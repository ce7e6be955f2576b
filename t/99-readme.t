#!/usr/bin/perl
# The README's examples work as written: every fenced ```nginx block of README.md runs in
# a real nginx (2 workers) with only its ports, addresses and the `load_module` path
# substituted (key files keep their names, in the prefix), and traffic goes through it
# with the README's own CLI lines (the `noisesocket` section: keygen/pubkey, `listen ...
# --echo` for NoiseSocket back ends, `connect host:7443 ... -v` for clients). A block
# this test does not know how to drive fails it, so a new example must come with its
# traffic here.

use strict;
use warnings;
use Test::More;
use File::Basename qw(dirname);
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
chmod 0755, $dir;    # workers (nobody) open the key zone's state file by its path
my $readme = $t->read_file($t->repo . '/README.md');
my @blocks = $readme =~ /^```nginx\n(.*?)^```$/msg;
ok(@blocks >= 3, scalar(@blocks) . ' nginx examples in the README');

# The README's CLI lines, run by sh in the test dir with the built CLI first on PATH.
my ($cli_block) = $readme =~ /^## The `noisesocket` CLI\n+```sh\n(.*?)^```$/ms;
my @cli = grep { /noisesocket / } split /\n/, $cli_block // '';
my ($keygen) = grep { /keygen/ } @cli;
my ($listen) = grep { /^noisesocket listen / } @cli;
my ($connect) = grep { /^noisesocket connect / && !/ -N\b/ } @cli;
my ($connect_n) = grep { /noisesocket connect .* -N\b/ } @cli;
ok($keygen && $listen && $connect && $connect_n, 'the README has keygen, listen and both connect lines')
    or BAIL_OUT('no CLI lines');
my $path = dirname($t->cli) . ":$ENV{PATH}";
sub sh {
    my ($line, $input, $timeout) = @_;
    return $t->run_cmd(['sh', '-c', "cd $dir && export PATH=$path && $line"], $input, $timeout // 20);
}

# Keys, with the README's own commands: the client's (my.key), the server's, nginx's
# gateway key and the back ends'.
is(sh($keygen)->{rc}, 0, "README: $keygen");
$t->keygen($_) for qw(server gateway backend1 backend2);
$t->write_file('clients.pub', $t->read_file('my.pub'), 0644);
$t->write_file('backends.pub', $t->read_file('backend1.pub') . $t->read_file('backend2.pub'), 0644);

# Ports and addresses of the examples -> free local ones.
my %address = ('10.0.0.1:7443' => 'b1', '10.0.0.2:7443' => 'b2', '10.0.0.5:8000' => 'authority');
my %port = (7443 => 'noise', 9000 => 'gateway', 8080 => 'backend', 9113 => 'status', 3000 => 'app', 8081 => 'keysapi');
sub localise {
    my ($block) = @_;
    $block =~ s/^\s*load_module\s+modules\/ngx_stream_noise_module\.so;\n//m;    # the harness loads it
    $block =~ s{/var/lib/nginx/noise/}{%%TESTDIR%%/}g;    # the key zone's state file
    for my $a (keys %address) { $block =~ s/\Q$a\E/127.0.0.1:%%PORT_$address{$a}%%/g }
    # An example whose own http server listens on 8080 gets another port for it.
    my %p = (%port, $block =~ /\blisten\s+127\.0\.0\.1:8080\b/ ? (8080 => 'internal') : ());
    for my $p (keys %p) { $block =~ s/(?<![\d.%])$p\b/%%PORT_$p{$p}%%/g }
    return $block;
}

# Back ends: a plain one on 8080 that answers the first line it gets and closes (as a
# request-response server does), an HTTP app on 3000 that shows the client key header, and
# the NoiseSocket back ends from the README's `listen` line.
my $backend = $t->port('backend');
my $pid = $t->fork_helper;
if (!$pid) {
    my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$backend", Listen => 64, ReuseAddr => 1) or die;
    $SIG{CHLD} = 'IGNORE';
    while (my $c = $l->accept) {
        next if fork;
        my $line = <$c> // '';
        print $c "backend got: $line";
        exit 0;
    }
    exit 0;
}
$t->wait_port($backend);
my $app = $t->port('app');
$pid = $t->fork_helper;
if (!$pid) {
    my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$app", Listen => 64, ReuseAddr => 1) or die;
    $SIG{CHLD} = 'IGNORE';
    while (my $c = $l->accept) {
        next if fork;
        my $key = '';
        while (my $h = <$c>) {
            last if $h =~ /^\r?\n$/;
            $key = $1 if $h =~ /^X-Noise-Client-Key: (\S*)/i;
        }
        my $body = "client key: $key\n";
        print $c "HTTP/1.0 200 OK\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
        exit 0;
    }
    exit 0;
}
$t->wait_port($app);
for my $b (qw(1 2)) {
    my $p = $t->port("b$b");
    (my $line = $listen) =~ s/\b7443\b/$p/;
    $line =~ s/\bserver\.key\b/backend$b.key/;
    $line =~ s/\s*#.*//;
    $t->spawn('sh', '-c', "cd $dir && export PATH=$path && exec $line");
    $t->wait_port($p);
}

# The README's echo server and its -N client, as written but for the port.
{
    my $p = $t->port('direct');
    (my $server = $listen) =~ s/\b7443\b/$p/;
    $server =~ s/\s*#.*//;
    $t->spawn('sh', '-c', "cd $dir && export PATH=$path && exec $server");
    $t->wait_port($p);
    (my $line = $connect_n) =~ s/\bhost:7443\b/127.0.0.1:$p/;
    my $r = sh($line);
    is($r->{out}, "hello\n", "README: $connect_n gets its echo") or diag($r->{err});
    is($r->{rc}, 0, 'and exits 0');
}

# The README's connect line, to the example's noise_listen port.
sub client {
    my ($input) = @_;
    (my $line = $connect) =~ s/\bhost:7443\b/127.0.0.1:${\$t->port('noise')}/;
    return sh($line, $input);
}
my $my_pub = $t->read_file('my.pub');
chomp $my_pub;

my $n = 0;
for my $block (@blocks) {
    $n++;
    my $conf = localise($block);
    my $driven = 0;
    if ($conf =~ /(?<!\w)pass\s/ && !$t->has('pass')) {
        pass("README example $n needs `pass`: " . $t->lacks_reason('pass'));
        next;
    }
    $t->write_config($conf);
    my ($rc, $out) = $t->test_config;
    is($rc, 0, "README example $n passes nginx -t") or do { diag($out); next };
    $t->run;
    if ($conf =~ /noise_auth_request\s/) {
        # Asking an authority: t/77's Python authority answers the README's path.
        my $auth = $t->port('authority');
        $t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', $auth, $dir);
        ok($t->wait_port($auth), "README example $n: its authority listens");
    } elsif ($conf =~ /noise_keys zone=/) {
        # The key zone runbook: refused until enrolled through the API, as the README says.
        is(client("hello\n")->{out}, '', "README example $n: an unknown key is refused");
        (my $k = $my_pub) =~ tr{+/}{-_};
        my $r = $t->run_cmd(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'PUT',
            '--data-binary', '{"verdict":"allow","attrs":{"device":"d-17"},"ttl":86400}',
            "http://127.0.0.1:${\$t->port('keysapi')}/keys/$k"]);
        is($r->{out}, '201', "README example $n: the README's PUT enrols the key");
        if ($conf =~ /state=/) {
            $t->stop;
            $t->run;
            like($t->run_cmd(['curl', '-s', "http://127.0.0.1:${\$t->port('keysapi')}/keys/$k"])->{out},
                qr/"device":"d-17"/, "README example $n: the enrolled key is still there after a restart");
        }
        $driven++;
    }
    if ($conf =~ /noise_listen/ && $conf =~ /(?<!\w)pass\s/) {
        my $r = client("GET / HTTP/1.0\r\nHost: app\r\n\r\n");
        like($r->{out}, qr/^HTTP\/1\.[01] 200 .*\r\n\r\nclient key: \Q$my_pub\E\n\z/s,
            "README example $n: an HTTP request through `pass` carries the client key") or diag($r->{err});
        $driven++;
    } elsif ($conf =~ /noise_listen/) {
        my $r = client("hello\n");
        is($r->{out}, "backend got: hello\n", "README example $n: the README's connect line gets the back end's answer") or diag($r->{err});
        is($r->{rc}, 0, "README example $n: and exits 0");
        like($r->{err}, qr/^protocol=Noise_XX_25519_ChaChaPoly_BLAKE2s$/m, "README example $n: -v reports the handshake");
        $driven++;
        if ($conf =~ /noise_auth_request\s/) {
            is(client("hello\n")->{out}, "backend got: hello\n", "README example $n: again");
            my @asked = grep { /^\/device-auth \Q$my_pub\E / } split /\n/, $t->read_file('requests.log');
            is(scalar @asked, 1, "README example $n: the authority was asked once, the answer kept in the zone");
        }
    }
    if ($conf =~ /noise_upstream on/) {
        my ($got) = $t->raw_exchange($t->port('gateway'), "through the gateway\n", until_data => 1, timeout => 10);
        is($got, "through the gateway\n", "README example $n: a plain client reaches a NoiseSocket back end through the gateway");
        $driven++;
    }
    if ($conf =~ /noise_status/) {
        my ($got) = $t->plain_exchange($t->port('status'), "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 5);
        like($got, qr/^HTTP\/1\.1 200 OK\r\n.*^nginx_noise_handshakes_total\{side="server",result="ok"\} \d+$/ms,
            "README example $n: the counters");
        $driven++;
    }
    ok($driven, "README example $n has traffic driven through it") or diag($block);
    $t->stop;
}

done_testing;
