#!/usr/bin/perl
# The module as a shared object: it loads into our nginx, exports nothing but what nginx
# needs (Rust's std symbols stay hidden: nginx dlopens modules RTLD_GLOBAL), registers its
# $noise_* variables, and leaves plain stream servers alone (its SSL-phase handler declines
# connections that did not arrive on a noise_listen socket).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $so = $t->{module};

# nginx itself: the configure options the module needs.
my $v = $t->run_cmd([$t->{nginx}, '-V']);
my ($version) = $v->{err} =~ m{nginx version: nginx/(\d+\.\d+\.\d+)};
is($t->version_text, $version // '', "the harness reads nginx $version");
ok($t->nginx_version >= 1_022_001, "nginx $version is 1.22.1 or newer (the supported range)");
like($v->{err}, qr{--with-stream\b}, 'nginx has stream');
like($v->{err}, qr{--with-compat\b}, 'nginx built --with-compat');

# Exported symbols: exactly the two modules (stream and http) and the three tables auto/make
# generates.
my $nm = $t->run_cmd(['nm', '-D', '--defined-only', $so]);
is($nm->{rc}, 0, 'nm reads the module') or diag($nm->{err});
my @exported = sort map { (split ' ')[-1] } grep { /\s[A-TV-Z]\s/ } split /\n/, $nm->{out};
my @modules = qw(ngx_stream_noise_module ngx_http_noise_module);
is_deeply(\@exported, [sort(qw(ngx_module_names ngx_module_order ngx_modules), @modules)],
    'only the module symbols are exported') or diag("@exported");
my $undef = $t->run_cmd(['nm', '-D', '--undefined-only', $so])->{out};
unlike($undef, qr/\b(_ZN|rust_)/, 'no Rust symbol is left for the dynamic linker');

# Loads without a stream block, and twice is refused by nginx itself.
$t->write_config('');
my ($rc, $out) = $t->test_config;
is($rc, 0, 'loads with no stream block') or diag($out);

$t->write_file('twice.conf', $t->preload . "load_module $so;\nload_module $so;\nevents {}\n", 0644);
($rc, $out) = $t->test_config('twice.conf');
isnt($rc, 0, 'loading it twice fails');
like($out, qr/module "ngx_stream_noise_module" is already loaded/, 'nginx says why');

# A plain stream server with the module loaded: the variables exist, are "not found"
# (empty) on a non-noise connection, and the server answers as without the module.
$t->write_config(<<'END');
stream {
    log_format vars 'p=[$noise_protocol] k=[$noise_client_key] h=[$noise_handshake_hash] '
                    'n=[$noise_negotiation] up=[$noise_upstream_protocol] '
                    'upk=[$noise_upstream_server_key]';
    access_log %%TESTDIR%%/logs/access.log vars;
    server {
        listen 127.0.0.1:%%PORT_plain%%;
        return "plain:$noise_protocol:$noise_client_key:end\n";
    }
}
END
my $mark = $t->error_log_mark;
$t->run;
my ($got) = $t->raw_exchange($t->port('plain'), '', timeout => 3);
is($got, "plain:::end\n", 'a plain server answers; $noise_* are empty on it');
$t->stop;
like($t->read_file('logs/access.log'), qr/^p=\[-\] k=\[-\] h=\[-\] n=\[-\] up=\[-\] upk=\[-\]$/m,
    'the access log shows every $noise_* as not found');
unlike($t->error_log_since($mark), qr/\[(alert|crit|emerg)\]/, 'no alerts in the error log');

done_testing;
