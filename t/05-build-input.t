#!/usr/bin/perl
# scripts/build.sh with a bad NGINX_SRC: one clear error line, a non-zero exit, and nothing
# left in the build dir that a later run (or the tests) could take for a finished build.
# Every check runs before anything is built, so this is quick.

use strict;
use warnings;
use File::Path qw(make_path);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
my $out = "$dir/out";

# Fake source trees: just enough to get past the earlier checks.
sub fake_tree {
    my ($name, $version, $number, $stream) = @_;
    my $root = "$dir/$name";
    make_path("$root/src/core", "$root/auto");
    $t->write_file("$name/src/core/nginx.h",
        "#define nginx_version      $number\n#define NGINX_VERSION      \"$version\"\n", 0644);
    $t->write_file("$name/auto/configure", "#!/bin/sh\nexit 1\n", 0755);
    if ($stream) { make_path("$root/src/stream"); $t->write_file("$name/src/stream/ngx_stream.h", '', 0644) }
    return $root;
}
make_path("$dir/notnginx");

for my $case (
    ['missing', "$dir/nope", qr/^build: NGINX_SRC=\S+: no such directory$/],
    ['not nginx', "$dir/notnginx", qr/^build: NGINX_SRC=\S+ is not an nginx source tree \(no src\/core\/nginx\.h\)$/],
    ['too old', fake_tree('old', '1.20.2', 1020002, 1), qr/^build: NGINX_SRC=\S+ is nginx 1\.20\.2; the module needs nginx 1\.22\.1 or newer$/],
    ['no stream', fake_tree('nostream', '1.24.0', 1024000, 0), qr/^build: NGINX_SRC=\S+ has no stream module sources \(src\/stream\)$/],
) {
    my ($name, $src, $re) = @$case;
    # A finished build from before must not survive a failed one.
    make_path("$out/sbin", "$out/modules");
    $t->write_file('out/sbin/nginx', "stale\n", 0755);
    $t->write_file('out/modules/ngx_stream_noise_module.so', "stale\n", 0644);
    my $r = $t->run_cmd(['env', "NGINX_SRC=$src", "NOISE_BUILD=$out", $t->repo . '/scripts/build.sh'], '', 60);
    isnt($r->{rc}, 0, "$name: exits non-zero");
    my @lines = grep { length } split /\n/, $r->{err};
    is(scalar @lines, 1, "$name: one error line") or diag($r->{err});
    like($lines[0] // '', $re, "$name: says what is wrong");
    ok(!-e "$out/sbin/nginx" && !-e "$out/modules/ngx_stream_noise_module.so", "$name: no artifacts left");
}

# A real tree whose ./configure flags lack stream.
my $r = $t->run_cmd(['env', "NGINX_SRC=" . fake_tree('flags', '1.24.0', 1024000, 1), "NOISE_BUILD=$out",
    'NGINX_CONFIGURE=--with-http_ssl_module', $t->repo . '/scripts/build.sh'], '', 120);
isnt($r->{rc}, 0, 'configure flags without stream: exits non-zero');
like($r->{err}, qr/^build: the nginx \.\/configure flags have no --with-stream/m, 'configure flags without stream: says so');
# Flags without http: the module's http side and the ngx crate need it.
$r = $t->run_cmd(['env', "NGINX_SRC=" . fake_tree('nohttp', '1.24.0', 1024000, 1), "NOISE_BUILD=$out",
    'NGINX_CONFIGURE=--with-stream --without-http', $t->repo . '/scripts/build.sh'], '', 120);
isnt($r->{rc}, 0, 'configure flags with --without-http: exits non-zero');
like($r->{err}, qr/^build: the nginx \.\/configure flags have --without-http: the module needs nginx's http/m,
    'configure flags with --without-http: says so');
done_testing;
