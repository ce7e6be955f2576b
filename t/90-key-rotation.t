#!/usr/bin/perl
# Key rotation without a flag day: several noise_private_key; XX sends the first, IK and NK
# clients are served by whichever key they know; $noise_server_key says which; the README
# runbook (add the new key second, reload, move clients, swap, reload, remove the old one)
# end to end with reloads; bad configurations (a ninth key, the same key twice, a second
# noise_upstream_private_key) fail nginx -t with the file and line.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(old new client stranger), map { "k$_" } 1 .. 8;
my $dir = $t->dir;
my $template = <<'END';
stream {
    log_format keys '$noise_protocol|$noise_server_key|$noise_client_key';
    access_log %%TESTDIR%%/logs/access.log keys;
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s
                       Noise_NK_25519_ChaChaPoly_BLAKE2s;
KEYS
        return "served by $noise_server_key\n";
    }
}
END
sub keys_conf { join '', map { "        noise_private_key %%TESTDIR%%/$_.key;\n" } @_ }
sub configure { $t->write_config($template =~ s/KEYS\n/keys_conf(@_)/er) }

my $port;
sub client {
    my ($protocol, $knows, $key) = @_;
    my @remote = $knows ? ('--remote-key', "$dir/$knows.pub") : ();
    my @own = $protocol =~ /_NK_/ ? () : ('--key', "$dir/" . ($key // 'client') . '.key');
    return $t->noise_client($port, '', '--protocol', $protocol, @own, @remote);
}
my ($XX, $IK, $NK) = map { "Noise_${_}_25519_ChaChaPoly_BLAKE2s" } qw(XX IK NK);

# Before: the old key alone.
configure('old');
$t->run;
$port = $t->port('noise');
my $r = client($IK, 'old');
is($r->{out}, "served by $pub{old}\n", 'one key: IK client on the old key');

# Step 1: add the new key second, reload.
configure('old', 'new');
$t->reload;
$r = client($XX, 'old');
is($r->{out}, "served by $pub{old}\n", 'two keys: XX is sent the first (old)');
$r = client($IK, 'old');
is($r->{out}, "served by $pub{old}\n", 'two keys: IK client still on the old key');
$r = client($IK, 'new');
is($r->{out}, "served by $pub{new}\n", 'two keys: IK client moved to the new key');
$r = client($NK, 'new');
is($r->{out}, "served by $pub{new}\n", 'two keys: NK client on the new key');
$r = client($NK, 'old');
is($r->{out}, "served by $pub{old}\n", 'two keys: NK client on the old key');
$r = client($IK, 'stranger');
isnt($r->{rc}, 0, 'a key the server does not hold: refused');
$t->wait_for(5, sub { $t->error_log =~ /handshake failed: decryption failed/ });
like($t->error_log, qr/\[info\].*noise: handshake failed: decryption failed/, 'one info line for it');

# Step 2: swap the order, reload: XX clients now learn the new key; old-key clients still work.
configure('new', 'old');
$t->reload;
$r = client($XX, 'new');
is($r->{out}, "served by $pub{new}\n", 'swapped: XX is sent the new key');
$r = client($IK, 'old');
is($r->{out}, "served by $pub{old}\n", 'swapped: a late IK client on the old key still works');

# Step 3: remove the old key, reload: the old key is gone.
configure('new');
$t->reload;
$r = client($IK, 'new');
is($r->{out}, "served by $pub{new}\n", 'old key removed: new-key IK client works');
$r = client($IK, 'old');
isnt($r->{rc}, 0, 'old key removed: old-key IK client refused');
$r = client($XX, 'old');
isnt($r->{rc}, 0, 'old key removed: an XX client pinned to the old key refuses the server');

# Eight keys: a client on the last one is served (7 misses first).
configure(map { "k$_" } 1 .. 8);
$t->reload;
$r = client($IK, 'k8');
is($r->{out}, "served by $pub{k8}\n", 'eight keys: IK client on the eighth');

my $log = $t->read_file('logs/access.log');
like($log, qr/^\Q$IK\E\|\Q$pub{new}\E\|\Q$pub{client}\E$/m, 'access log: $noise_server_key beside the client key');

# Bad configurations (checked with nginx -t on other files in the same directory).
$t->keygen('k9');
$t->write_config($template =~ s/KEYS\n/keys_conf(map { "k$_" } 1 .. 9)/er, 'nine.conf');
my ($rc, $out) = $t->test_config('nine.conf');
isnt($rc, 0, 'nine keys: nginx -t fails');
like($out, qr/"noise_private_key": at most 8 keys per level \(\S+k9\.key is one too many\) in \S+nine\.conf:\d+/,
    'nine keys: the message names the key, file and line');

$t->write_config($template =~ s/KEYS\n/keys_conf('old', 'new', 'old')/er, 'twice.conf');
($rc, $out) = $t->test_config('twice.conf');
isnt($rc, 0, 'the same key twice: nginx -t fails');
like($out, qr/"noise_private_key": \S+old\.key holds the same key as \S+old\.key in \S+twice\.conf:\d+/,
    'the same key twice: message');

# KK tries every private key with every trusted key: the product is bounded.
my @seventeen = map { $t->keygen("t$_") } 1 .. 17;
$t->write_file('seventeen.pub', join("\n", @seventeen) . "\n", 0644);
$t->write_config(<<'END', 'kk.conf');
stream {
    server {
        noise_listen 127.0.0.1:%%PORT_kk%%;
        noise_protocol Noise_KK_25519_ChaChaPoly_BLAKE2s;
        noise_private_key %%TESTDIR%%/old.key;
        noise_private_key %%TESTDIR%%/new.key;
        noise_trusted_keys %%TESTDIR%%/seventeen.pub;
        return x;
    }
}
END
($rc, $out) = $t->test_config('kk.conf');
isnt($rc, 0, 'KK: 2 private keys × 17 trusted keys: nginx -t fails');
like($out, qr/tries each trusted key with each private key; 2 keys × 17 trusted keys is more than 32/, 'KK bound message');

$t->write_config(<<'END', 'upstream.conf');
stream {
    server {
        listen 127.0.0.1:%%PORT_unused%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/old.key;
        noise_upstream_private_key %%TESTDIR%%/new.key;
        proxy_pass 127.0.0.1:%%PORT_unused2%%;
    }
}
END
($rc, $out) = $t->test_config('upstream.conf');
isnt($rc, 0, 'two noise_upstream_private_key: nginx -t fails');
like($out, qr/"noise_upstream_private_key" directive is duplicate in \S+upstream\.conf:\d+/, 'duplicate message');

# Bad input: a first message that names IK, with garbage where the keys go.
my $workers = $t->worker_set;
$t->raw_exchange($port, "\x00\x06\x00\x01\x00\x0b\x01\x01\x00\x30" . "\x07" x 48, timeout => 2);
is($t->worker_set, $workers, 'bad input to a rotating server: no worker died');
unlike($t->error_log, qr/\[(alert|crit)\]/, 'no alert or crit (the emerg lines are the nginx -t runs above)');

done_testing;
