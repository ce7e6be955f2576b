#!/usr/bin/perl
# noise_keys_zone ... state=FILE (docs/key-zone.md §6): every acknowledged change (PUT,
# DELETE, POST) is in the file before the API answers, and a new zone loads it. Across a
# full stop and start: keys, verdicts, attributes and expiry kept, deleted keys stay
# deleted, expired ones are not brought back; across a reload too, and changes after it.
# Writers on both workers at once lose nothing; the file is compacted past twice the live
# set; a reload that moves the file writes the kept zone there; a change the file refuses
# is undone and answered 500. A file that ends in a record cut short (a crash mid-write)
# starts with a warn line and the records before it; a corrupt one stops nginx -t and the
# start, naming the file and the byte. An unusable path fails nginx -t; a directory the
# workers cannot write is a warn. And $noise_key_attr_NAME in http, through pass.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
chmod 0755, $dir;    # workers run as nobody: they open the state file by its path
mkdir "$dir/state";
my ($uid, $gid) = (getpwnam('nobody'))[2, 3];
chown $uid, $gid, "$dir/state" if $> == 0;    # the operator's step: the workers' directory
my $server_pub = $t->keygen('server');
my %pub = map { $_ => $t->keygen($_) } qw(dev1 dev2 dev3 dev4 dev5 web);
my $state = "$dir/state/devices.journal";

sub urlkey { $t->urlkey(@_) }

# API calls through curl: returns (status, body).
sub api { $t->http_call(@_) }

sub count { (api('GET', '/keys/'))[1] =~ /"keys":(\d+)/ ? $1 : -1 }

sub client {
    my ($key, @opts) = @_;
    return $t->noise_client($t->port('noise'), '', '--key', "$dir/$key.key", @opts)->{out};
}

# Configuration errors: nginx -t names the directive and the file.
for my $case (
    ["stream { noise_keys_zone d 1m state=$dir/nowhere/d.journal; }", qr/"noise_keys_zone": state file: cannot write "\Q$dir\E\/nowhere\/d\.journal" in "\Q$dir\E\/nowhere": No such file or directory/, 'a state file in a missing directory'],
    ["stream { noise_keys_zone d 1m state=$dir/state/x state=$dir/state/y; }", qr/"state=" is given twice/, 'state= twice'],
    ["stream { noise_keys_zone d 1m state=$dir/state/x; noise_keys_zone e 1m state=$dir/state/x; }", qr/the state file "\Q$dir\E\/state\/x" is already another zone's/, 'one file for two zones'],
    ["stream { noise_keys_zone d 1m state=$dir/state; }", qr/"\Q$dir\E\/state" is not a regular file/, 'a directory as the state file'],
) {
    $t->write_config($case->[0]);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$case->[2] fails nginx -t");
    like($out, qr/$case->[1].*nginx\.conf:\d+/s, "$case->[2]: says why and where");
}

# A directory the workers cannot write: nginx starts (they can append to the file the master
# gives them) but says the file will not be compacted at run time.
SKIP: {
    skip 'not root: the workers run as this user', 2 unless $> == 0;
    $t->write_config("stream { noise_keys_zone d 1m state=$dir/d.journal; }");
    my ($rc, $out) = $t->test_config;
    is($rc, 0, 'a state file in a directory of root passes nginx -t');
    like($out, qr/\[warn\].*key zone "d": .*the workers' user \(uid $uid\) cannot create files in its directory/, 'with a warn line saying what to change');
}

my $conf = <<'END';
stream {
    noise_keys_zone devices 1m state=state/devices.journal;
    noise_private_key %%TESTDIR%%/server.key;
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_keys zone=devices;
        return "device=$noise_key_attr_device key=$noise_client_key\n";
    }
PASS_SERVER}
http {
    access_log off;
    client_max_body_size 10m;
    client_body_buffer_size 10m;
    server {
        listen 127.0.0.1:%%PORT_http%%;
        location /keys/ { noise_keys_api zone=devices write=on; }
        location / {
            return 200 "http device=$noise_key_attr_device tenant=$noise_key_attr_tenant none=[$noise_key_attr_nope]\n";
        }
    }
}
END
my $pass = $t->has('pass') ? <<'END' : '';
    server {
        noise_listen 127.0.0.1:%%PORT_web%%;
        noise_keys zone=devices;
        pass 127.0.0.1:%%PORT_http%%;
    }
END
$t->write_config($conf =~ s/PASS_SERVER/$pass/r);
$t->run;
ok(-f $state, 'the state file is created at start, relative to the prefix');
SKIP: {
    skip 'not root: no user to give the file to', 1 unless $> == 0;
    is((stat $state)[4], $uid, 'and given to the workers\' user');
}

# Changes of every kind.
my ($st) = api('PUT', '/keys/' . urlkey($pub{dev1}), '{"verdict":"allow","attrs":{"device":"d-1","tenant":"acme"}}');
is($st, 201, 'PUT dev1');
($st) = api('PUT', "/keys/" . urlkey($pub{dev2}), '{"verdict":"deny"}');
is($st, 201, 'PUT dev2 deny');
my $body;
($st, $body) = api('PUT', "/keys/" . urlkey($pub{dev3}), '{"verdict":"allow","attrs":{"device":"d-3"},"ttl":3600}');
my ($expires) = $body =~ /"expires":(\d+)/;
ok($expires, 'PUT dev3 with a ttl');
api('PUT', "/keys/" . urlkey($pub{dev4}), '{"verdict":"allow"}');
($st) = api('DELETE', "/keys/" . urlkey($pub{dev4}));
is($st, 200, 'DELETE dev4');
api('PUT', "/keys/" . urlkey($pub{dev5}), '{"verdict":"allow","ttl":1}');
my @bulk = map { $t->keygen("bulk$_") } 1 .. 10;
($st) = api('POST', '/keys/', join '', map { qq({"key":"$bulk[$_]","verdict":"allow","attrs":{"device":"b$_"}}\n) } 0 .. 9);
is($st, 200, 'a bulk load');
is(client('dev1'), "device=d-1 key=$pub{dev1}\n", 'dev1 admitted before the restart');
sleep 2;    # dev5 expires

# A full restart.
$t->stop;
$t->run;
like($t->error_log, qr/\[notice\].*key zone "devices": 13 keys loaded from "\Q$state\E"/, 'the start says what it loaded');
is(client('dev1'), "device=d-1 key=$pub{dev1}\n", 'after a restart: an allow entry with its attributes');
is(client('dev2'), '', 'a deny entry is still refused');
is(client('dev4'), '', 'a deleted key stays deleted');
like(client('bulk7', '--protocol', 'Noise_IK_25519_ChaChaPoly_BLAKE2s', '--remote-key', $server_pub), qr/^device=b6 /, 'bulk-loaded keys are back');
($st, $body) = api('GET', "/keys/" . urlkey($pub{dev3}));
like($body, qr/"expires":\Q$expires\E\b/, 'the expiry is kept as it was');
($st) = api('GET', "/keys/" . urlkey($pub{dev5}));
is($st, 404, 'an entry that expired is not brought back');
is(count(), 13, 'and is not counted: 3 + 10 keys');

# A reload keeps the zone; changes after it are journaled as before.
$t->reload;
is(client('dev1'), "device=d-1 key=$pub{dev1}\n", 'after a reload');
api('PUT', "/keys/" . urlkey($pub{dev4}), '{"verdict":"allow","attrs":{"device":"d-4"}}');
api('DELETE', '/keys/' . urlkey($pub{dev1}));
$t->stop;
$t->run;
is(client('dev4'), "device=d-4 key=$pub{dev4}\n", 'a change after a reload survives a restart');
is(client('dev1'), '', 'a deletion after a reload too');

# $noise_key_attr_NAME in http through pass. The key goes in whether or not this nginx has
# `pass` (1.25.5), so that the counts below are the same on every version.
api('PUT', "/keys/" . urlkey($pub{web}), '{"verdict":"allow","attrs":{"device":"w-1","tenant":"t9"}}');
SKIP: {
    skip $t->lacks_reason('pass'), 2 unless $t->has('pass');
    my $r = $t->noise_client($t->port('web'), "GET / HTTP/1.0\r\n\r\n", '--key', "$dir/web.key");
    like($r->{out}, qr/^http device=w-1 tenant=t9 none=\[\]$/m, 'http sees the key\'s attributes through pass, empty for a missing one');
    $r = $t->noise_client($t->port('web'), "GET / HTTP/1.0\r\n\r\n", '--key', "$dir/dev2.key");
    unlike($r->{out}, qr/http device/, 'a denied key never reaches http');
}

# Compaction: the same 600 keys loaded four times make 2400 records, more than twice the
# live set (and 1024 more): the file is rewritten with one record per key.
my $lines = join '', map { my $k = pack('H*', sprintf '%064x', $_ + 1000); require MIME::Base64; qq({"key":") . MIME::Base64::encode_base64($k, '') . qq(","verdict":"allow"}\n) } 1 .. 600;
api('POST', '/keys/', $lines) for 1 .. 3;
my $three = -s $state;
api('POST', '/keys/', $lines);
my $four = -s $state;
cmp_ok($four, '<', $three / 2, "compacted when past twice the live set ($three bytes, then $four)");
is(count(), 614, 'with every key');
$t->stop;
$t->run;
is(count(), 614, 'and a restart reads the compacted file');

# A state file that refuses a change: 500 with the reason, and the change is not applied.
$t->reload;    # new workers: each opens the file at its first write
chmod 0400, $state;
($st, $body) = api('PUT', '/keys/' . urlkey($pub{dev5}), '{"verdict":"allow"}');
is($st, 500, 'a change the state file refuses: 500');
like($body, qr/cannot open the state file .*Permission denied.* \(the change was not applied\)/, 'saying why');
($st) = api('GET', '/keys/' . urlkey($pub{dev5}));
is($st, 404, 'and the table was left as it was');
chmod 0600, $state;

# A record cut short at the end (a crash in the middle of an append): ignored, with a warn.
$t->stop;
my $good = -s $state;
open my $fh, '>>', $state or die;
print $fh pack('v', 40), 'x' x 20;
close $fh;
my $mark = $t->error_log_mark;
$t->run;
like($t->error_log_since($mark), qr/\[warn\].*key zone "devices": 614 keys loaded from "\Q$state\E".*last record, at byte $good, was cut short/, 'a torn last record: one warn line with its offset');
is(client('dev4'), "device=d-4 key=$pub{dev4}\n", 'and the keys before it are there');
is(-s $state, $good, 'the start rewrote the file without it');

# Writers on both workers at once: four clients, 10 PUTs each, in parallel; all in the file.
my @par = map { $t->keygen("par$_") } 1 .. 40;
my $http = $t->port('http');
my $script = join "\n", map {
    my $w = $_;
    '(' . join('; ', map {
        my $k = urlkey($par[$w * 10 + $_]);
        "curl -s -o /dev/null -X PUT --data-binary '{\"verdict\":\"allow\",\"attrs\":{\"device\":\"p$w$_\"}}' http://127.0.0.1:$http/keys/$k"
    } 0 .. 9) . ') &'
} 0 .. 3;
$t->run_cmd(['sh', '-c', "$script\nwait"]);
is(count(), 654, 'forty parallel PUTs applied');
$t->stop;
$t->run;
is(count(), 654, 'and all forty journaled: the file had every append whole');
is(client('par17'), "device=p16 key=$par[16]\n", 'with their attributes');

# A reload that moves the state file writes the kept zone's keys to the new one at once.
$t->write_config(($conf =~ s/PASS_SERVER/$pass/r) =~ s{state/devices\.journal}{state/moved.journal}r);
$mark = $t->error_log_mark;
$t->reload;
like($t->error_log_since($mark), qr/\[notice\].*key zone "devices": 654 keys written to "\Q$dir\E\/state\/moved\.journal"/, 'a reload with a new state= path writes the zone there');
$t->stop;
$t->run;
is(count(), 654, 'and a restart loads it from there');
$t->write_config($conf =~ s/PASS_SERVER/$pass/r);

# A corrupt file: nginx -t and the start refuse it, naming the file and the byte.
$t->stop;
my $bytes = $t->read_file('state/devices.journal');
substr($bytes, 100, 1) = chr(ord(substr($bytes, 100, 1)) ^ 0xff);
$t->write_file('state/devices.journal', $bytes);
my ($rc, $out) = $t->test_config;
isnt($rc, 0, 'a corrupt state file fails nginx -t');
like($out, qr/\[emerg\].*key zone "devices": the state file "\Q$state\E" is corrupt at byte \d+: .*refuses to start/, 'naming the file and the byte, and what to do');
my $r = $t->run_cmd([$t->{nginx}, '-p', "$dir/", '-c', "$dir/nginx.conf"]);
isnt($r->{rc}, 0, 'and nginx does not start on it (rather than admit nobody, or everybody)');
is($t->read_file('state/devices.journal'), $bytes, 'the file is left as it was for the operator');

done_testing;
