#!/usr/bin/perl
# noise_keys_zone / noise_keys / noise_keys_api: client keys decided by a shared-memory zone
# that an http API changes without a reload (docs/key-zone.md). With 2 workers: a key
# enrolled through the API gets in on every worker at once, a denied or unknown key is
# refused (IK before message 2, XX after message 3, IX after its first transport frame),
# attributes become $noise_key_attr_NAME, entries expire, the file lists still win, the zone
# survives a reload; bad bodies get 400 and change nothing, a full zone 507, a read-only
# location 405; bad directives fail nginx -t with file and line.

use strict;
use warnings;
use Test::More;
use MIME::Base64 qw(encode_base64);
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $server_pub = $t->keygen('server');
my %pub = map { $_ => $t->keygen($_) } qw(dev1 dev2 dev3 revoked);
$t->write_file('revoked.list', "$pub{revoked}\n", 0644);
my $dir = $t->dir;
my $ik = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';
my $ix = 'Noise_IX_25519_ChaChaPoly_BLAKE2s';

sub urlkey { $t->urlkey(@_) }

# API calls through curl: returns (status, body).
sub api { $t->http_call(@_) }

# Configuration errors.
for my $case (
    ['stream { noise_keys_zone devices 1k; }', qr/"noise_keys_zone": invalid zone size "1k"/, 'a tiny zone'],
    ['stream { noise_keys_zone devices 1m colour=red; }', qr/"noise_keys_zone": unknown parameter "colour=red" \(only "state=FILE"\)/, 'an unknown parameter'],
    ['stream { noise_keys_zone d 1m; noise_keys_zone d 1m; }', qr/zone "d" is already declared/, 'a zone declared twice'],
    ['stream { server { noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; noise_keys zone=nope; return x; } }', qr/"noise_keys" in \S+nginx\.conf:\d+ names the key zone "nope", which no "noise_keys_zone nope SIZE;" in the stream block declares/, 'a zone nobody declares'],
    ['stream { noise_keys_zone d 1m; server { noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; noise_keys miss=deny; return x; } }', qr/"noise_keys": "zone=" is required/, 'noise_keys without a zone'],
    ['stream { noise_keys_zone d 1m; server { noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; noise_keys zone=d miss=maybe; return x; } }', qr/invalid "miss=maybe"/, 'a bad miss='],
    ['stream { noise_keys_zone d 1m; server { noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; noise_keys zone=d miss=lookup; return x; } }', qr/has "miss=lookup" but no "noise_auth_request"/, 'miss=lookup without noise_auth_request (t/77)'],
    ['stream { noise_keys_zone d 1m; } http { server { location / { noise_keys_api zone=d write=maybe; } } }', qr/invalid "write=maybe"/, 'a bad write='],
) {
    $t->write_config($case->[0]);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$case->[2] fails nginx -t");
    like($out, qr/$case->[1].*nginx\.conf(:\d+)?/s, "$case->[2]: says why and where");
}

$t->write_config(<<'END');
stream {
    noise_keys_zone devices 1m;
    noise_keys_zone tiny 32k;
    noise_private_key %%TESTDIR%%/server.key;
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s Noise_IX_25519_ChaChaPoly_BLAKE2s;
    server {
        noise_listen 127.0.0.1:%%PORT_deny%%;
        noise_keys zone=devices;
        noise_revoked_keys %%TESTDIR%%/revoked.list;
        return "device=$noise_key_attr_device tenant=$noise_key_attr_tenant key=$noise_client_key\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_allow%%;
        noise_keys zone=devices miss=allow;
        return "in device=$noise_key_attr_device\n";
    }
}
http {
    access_log off;
    client_max_body_size 10m;
    client_body_buffer_size 10m;    # bodies stay in memory (workers cannot write the temp dir here)
    server {
        listen 127.0.0.1:%%PORT_http%%;
        location /keys/ { noise_keys_api zone=devices write=on; }
        location /ro/ { noise_keys_api zone=devices; }
        location /tiny/ { noise_keys_api zone=tiny write=on; }
        location /metrics { noise_status; }
    }
}
END
$t->run;
my $deny = $t->port('deny');
my $allow = $t->port('allow');

sub client {
    my ($port, $key, @opts) = @_;
    return $t->noise_client($port, '', '--key', "$dir/$key.key", @opts);
}

my ($st, $body) = api('GET', '/keys/');
is($st, 200, 'GET / counts');
like($body, qr/"keys":0/, 'the zone starts empty');
like($body, qr/"capacity":(\d+)/, 'and says its capacity');

# Unknown keys: refused with miss=deny, admitted with miss=allow.
my $mark = $t->error_log_mark;
my $r = client($deny, 'dev1');
is($r->{out}, '', 'an unknown key gets nothing with miss=deny');
ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /\[info\].*client key not authorized: \Q$pub{dev1}\E/ }),
    'one info line names the refused key');
is(client($allow, 'dev1')->{out}, "in device=\n", 'miss=allow admits an unknown key, without attributes');

# Enrol dev1 with attributes, in base64url.
($st, $body) = api('PUT', '/keys/' . urlkey($pub{dev1}), '{"verdict":"allow","attrs":{"device":"d-1","tenant":"acme"}}');
is($st, 201, 'PUT of a new key: 201');
like($body, qr/"device":"d-1"/, 'the reply shows the entry');
($st) = api('PUT', '/keys/' . urlkey($pub{dev1}), '{"verdict":"allow","attrs":{"device":"d-1","tenant":"acme"}}');
is($st, 200, 'PUT of a known key: 200');
my %seen;
for (1 .. 10) {
    my $out = client($deny, 'dev1')->{out};
    $seen{$out}++;
}
is_deeply([keys %seen], ["device=d-1 tenant=acme key=$pub{dev1}\n"], 'every connection on every worker is admitted with its attributes (XX)');
is(client($deny, 'dev1', '--protocol', $ik, '--remote-key', $server_pub)->{out}, "device=d-1 tenant=acme key=$pub{dev1}\n", 'IK too');
is(client($deny, 'dev1', '--protocol', $ix)->{out}, "device=d-1 tenant=acme key=$pub{dev1}\n", 'IX too (decided at its first transport frame)');

# A key in standard base64 goes into the path as it is: one holding "//" or starting with
# "/" must not be broken by nginx's merge_slashes (the API reads the request line).
{
    my $slashy = encode_base64("\xff" x 32, '');   # 42 slashes, then "8="
    my ($st, $body) = api('PUT', "/keys/$slashy", '{"verdict":"allow","attrs":{"device":"slashes"}}');
    is($st, 201, 'PUT of a standard base64 key made of slashes');
    ($st, $body) = api('GET', '/keys/' . urlkey($slashy));
    is($st, 200, 'found again under its base64url form: the same key');
    like($body, qr/"device":"slashes"/, 'with its attributes');
    ($st) = api('GET', '/keys/%2F%2f' . substr($slashy, 2, 40) . '8%3D');
    is($st, 200, 'and percent-escaped');
    ($st) = api('DELETE', "/keys/$slashy?ignored=1");
    is($st, 200, 'DELETE it in standard base64, a query string aside');
}

# Deny entries.
($st) = api('PUT', "/keys/$pub{dev2}", '{"verdict":"deny"}');
is($st, 201, 'PUT of a deny entry in standard base64');
for my $opts ([], ['--protocol', $ik, '--remote-key', $server_pub], ['--protocol', $ix]) {
    my $what = @$opts ? $opts->[1] : 'XX';
    $r = client($deny, 'dev2', @$opts);
    is($r->{out}, '', "$what: a denied key gets nothing");
    isnt($r->{rc}, 0, "$what: and the client says it failed") if $what eq $ik;
    is(client($allow, 'dev2', @$opts)->{out}, '', "$what: a deny entry wins over miss=allow");
}
$r = client($deny, 'dev2', '--protocol', $ik, '--remote-key', $server_pub);
like($r->{err}, qr/reject/i, 'IK: refused with an explicit reject, before message 2');

# The revoked file still wins over an allow entry.
api('PUT', "/keys/$pub{revoked}", '{"verdict":"allow"}');
$mark = $t->error_log_mark;
is(client($deny, 'revoked')->{out}, '', 'noise_revoked_keys wins over the zone');
ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /client key is revoked/ }), 'and says so');

# GET, DELETE.
($st, $body) = api('GET', '/keys/' . urlkey($pub{dev1}));
is($st, 200, 'GET a key');
like($body, qr/"tenant":"acme".*"verdict":"allow"/, 'shows verdict and attributes');
($st) = api('GET', "/keys/$pub{dev3}");
is($st, 404, 'GET an absent key: 404');
($st) = api('DELETE', '/keys/' . urlkey($pub{dev1}));
is($st, 200, 'DELETE a key');
($st) = api('DELETE', '/keys/' . urlkey($pub{dev1}));
is($st, 404, 'DELETE it again: 404');
is(client($deny, 'dev1')->{out}, '', 'a deleted key is refused from the next handshake on');

# Expiry.
api('PUT', "/keys/$pub{dev3}", '{"verdict":"allow","ttl":2}');
like(client($deny, 'dev3')->{out}, qr/key=\Q$pub{dev3}\E/, 'an entry with a ttl admits');
sleep 3;
is(client($deny, 'dev3')->{out}, '', 'and is gone when the ttl has passed');

# Bad bodies and keys: 400, nothing changed.
my ($before) = (api('GET', '/keys/'))[1] =~ /"keys":(\d+)/;
for my $case (
    ['PUT', "/keys/$pub{dev3}", 'not json', 'not JSON'],
    ['PUT', "/keys/$pub{dev3}", '{"verdict":"perhaps"}', 'verdict'],
    ['PUT', "/keys/$pub{dev3}", '{"verdict":"allow","attrs":{"Bad Name":"x"}}', 'attribute name'],
    ['PUT', "/keys/$pub{dev3}", '{"verdict":"allow","attrs":{"a":"' . ('x' x 100) . '"}}', 'at most'],
    ['PUT', "/keys/$pub{dev3}", '{"verdict":"allow","ttl":-5}', 'ttl'],
    ['PUT', "/keys/$pub{dev3}", '{"verdict":"allow","colour":"red"}', 'unknown field'],
    ['PUT', '/keys/notakey', '{"verdict":"allow"}', 'not a key'],
    ['POST', '/keys/', qq({"key":"$pub{dev3}","verdict":"allow"}\n{"key":"$pub{dev2}","verdict":"nope"}\n), 'line 2'],
    ['POST', '/keys/', qq({"verdict":"allow"}\n), 'line 1'],
) {
    my ($m, $path, $b, $why) = @$case;
    ($st, $body) = api($m, $path, $b);
    is($st, 400, "$m with a bad body ($why): 400");
    like($body, qr/\Q$why\E/, "and says why ($why)");
}
my ($after) = (api('GET', '/keys/'))[1] =~ /"keys":(\d+)/;
is($after, $before, 'nothing of a refused body was applied');
# noise_status has the zones' sizes, as the API counts them.
{
    my ($cap) = (api('GET', '/keys/'))[1] =~ /"capacity":(\d+)/;
    my $m = $t->metrics;
    is($t->series('nginx_noise_key_zone_keys{zone="devices"}', $m), $after, 'noise_status: the keys in the zone');
    is($t->series('nginx_noise_key_zone_capacity{zone="devices"}', $m), $cap, 'noise_status: its capacity');
    ok(defined $t->series('nginx_noise_key_zone_keys{zone="tiny"}', $m), 'noise_status: every zone');
    like($m, qr/^# TYPE nginx_noise_key_zone_keys gauge$/m, 'as a gauge');
}
is(client($deny, 'dev3')->{out}, '', 'not even the good first line of a refused bulk load');

# Read-only location.
($st) = api('PUT', "/ro/$pub{dev3}", '{"verdict":"allow"}');
is($st, 405, 'a read-only location refuses writes');
($st) = api('GET', "/ro/$pub{dev2}");
is($st, 200, 'and answers reads');

# Bulk load, and a full zone.
my @bulk = map { $t->keygen("bulk$_") } 1 .. 20;
my $lines = join '', map { qq({"key":"$bulk[$_]","verdict":"allow","attrs":{"device":"b@{[$_ + 1]}"}}\n) } 0 .. $#bulk;
($st, $body) = api('POST', '/keys/', $lines);
is($st, 200, 'a bulk load');
like($body, qr/"applied":20/, 'applies every line');
like($t->noise_client($deny, '', '--key', "$dir/bulk7.key")->{out}, qr/device=b7 /, 'a bulk-loaded key is admitted with its attributes');
($st, $body) = api('GET', '/tiny/');
my ($tiny) = $body =~ /"capacity":(\d+)/;
ok($tiny && $tiny < 500, "the 32k zone holds $tiny keys");
my $many = join '', map { my $k = sprintf '%064x', $_; $k = pack('H*', $k); require MIME::Base64; qq({"key":") . MIME::Base64::encode_base64($k, '') . qq(","verdict":"allow"}\n) } 1 .. $tiny + 1;
($st, $body) = api('POST', '/tiny/', $many);
is($st, 507, 'a bulk load larger than the zone: 507') or diag $body;
($st, $body) = api('GET', '/tiny/');
like($body, qr/"keys":0/, 'and nothing of it was applied');

# The zone survives a reload: the entries stay, with the same workers' view.
$t->reload;
like(client($deny, 'bulk3')->{out}, qr/device=b3 /, 'entries survive a reload');
is(client($deny, 'dev2')->{out}, '', 'deny entries too');

# Plaintext and garbage on the NoiseSocket port still get nothing.
my ($g) = $t->raw_exchange($deny, "GET / HTTP/1.0\r\n\r\n");
is($g, '', 'plaintext on a noise_keys server gets nothing');

done_testing;
