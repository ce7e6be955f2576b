#!/usr/bin/perl
# A K pattern reached by a retry: a client that offers XX to a server that accepts only KK is
# asked to retry with KK, and its retry message is read as a first message is: the client's
# key taken from noise_trusted_keys (each tried), each of the server's keys tried (rotation).
# A retry message nobody can authenticate is the client's fault: one info line, never an
# error line blaming the configuration.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(old new alice bob stranger);
$t->write_file('trusted', "$pub{alice}\n$pub{bob}\n", 0644);
my $dir = $t->dir;
my ($XX, $KK) = map { "Noise_${_}_25519_ChaChaPoly_BLAKE2s" } qw(XX KK);
$t->write_config(<<"END");
stream {
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_protocol $KK;
        noise_private_key %%TESTDIR%%/old.key;
        noise_private_key %%TESTDIR%%/new.key;
        noise_trusted_keys %%TESTDIR%%/trusted;
        return "served \$noise_protocol for \$noise_client_key by \$noise_server_key\\n";
    }
}
END
$t->run;
my $port = $t->port('noise');
sub client {
    my ($key, $server) = @_;
    return $t->noise_client($port, '', '--protocol', $XX, '--protocol', $KK,
        '--key', "$dir/$key.key", '--remote-key', "$dir/$server.pub");
}

my $mark = $t->error_log_mark;
my $r = client('bob', 'new');
is($r->{out}, "served $KK for $pub{bob} by $pub{new}\n",
    'XX offered, KK retried: the second trusted key on the second server key') or diag($r->{err});
$r = client('alice', 'old');
is($r->{out}, "served $KK for $pub{alice} by $pub{old}\n", 'and the first on the first');
$r = client('stranger', 'new');
isnt($r->{rc}, 0, 'an untrusted client retrying with KK: refused');
ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /handshake failed/ }), 'its failure is logged');
my $since = $t->error_log_since($mark);
like($since, qr/\[info\].*noise: handshake failed: decryption failed/, 'at info: no trusted key authenticates it');
unlike($since, qr/\[(error|crit|alert|emerg)\]/, 'nothing at error level');
done_testing;
