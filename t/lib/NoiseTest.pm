package NoiseTest;

# A small harness in the style of nginx's Test::Nginx (which is not installable here):
# a temp dir per test file, a config template with free ports, start/stop/reload of the
# real nginx binary with our module, and helpers for keys, the CLI, the Python peer,
# plain backends, worker pids and open fds.
#
# Environment: TEST_NGINX_BINARY (default build/sbin/nginx), TEST_NGINX_MODULE (default
# build/modules/ngx_stream_noise_module.so), TEST_NGINX_CLI (build/bin/noisesocket),
# TEST_NGINX_PYTHON (build/venv/bin/python), TEST_NGINX_LEAVE=1 keeps the temp dir,
# TEST_NGINX_WORKERS (default 2: every suite runs several workers, as production does),
# TEST_NGINX_LOAD_MODULES (space-separated .so files loaded before ours, e.g. Debian's
# dynamic /usr/lib/nginx/modules/ngx_stream_module.so).
#
# Version-aware: `nginx_version` is read from the binary (`nginx -v`); `has('pass')` and
# friends say whether that nginx has a feature, and `skip_unless` skips with the reason.
#
# Template substitutions: %%TESTDIR%%, %%PORT_<name>%% (a free 127.0.0.1 port per name).
# The globals (load_module, pid, error_log at info, worker_processes) are prepended; a
# template that sets worker_processes itself keeps its own.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

my $repo = abs_path(dirname(__FILE__) . '/../..');

# An interrupted test (prove killed, ^C) must still stop its nginx and helpers: exiting
# runs DESTROY, a default signal death does not.
for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub { diag("caught SIG$sig, cleaning up"); exit 1 } unless ref $SIG{$sig};
}

sub new {
    my ($class) = @_;
    my $dir = tempdir('nginx-noise-t-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{TEST_NGINX_LEAVE});
    mkdir "$dir/logs";
    my $self = bless {
        dir => $dir,
        ports => {},
        children => [],
        nginx => $ENV{TEST_NGINX_BINARY} || "$repo/build/sbin/nginx",
        module => $ENV{TEST_NGINX_MODULE} || "$repo/build/modules/ngx_stream_noise_module.so",
        cli => $ENV{TEST_NGINX_CLI} || "$repo/build/bin/noisesocket",
        python => $ENV{TEST_NGINX_PYTHON} || $ENV{NOISE_PYTHON} || "$repo/build/venv/bin/python",
        peer => "$repo/tests/interop/ns_peer.py",
        repo => $repo,
        owner => $$,
        workers => $ENV{TEST_NGINX_WORKERS} || 2,
        load_modules => [grep { length } split ' ', $ENV{TEST_NGINX_LOAD_MODULES} // ''],
    }, $class;
    diag("test dir $dir (kept)") if $ENV{TEST_NGINX_LEAVE};
    for my $bin (qw(nginx module cli)) {
        BAIL_OUT("$self->{$bin} not found: run scripts/build.sh") unless -e $self->{$bin};
    }
    return $self;
}

# The nginx version as a number (1.22.1 is 1022001), from the binary under test.
sub nginx_version {
    my ($self) = @_;
    return $self->{version} //= do {
        my $v = $self->run_cmd([$self->{nginx}, '-v'])->{err};
        $v =~ m{nginx/(\d+)\.(\d+)\.(\d+)} or die "cannot read the nginx version: $v";
        $1 * 1_000_000 + $2 * 1_000 + $3;
    };
}

# nginx features that some supported versions lack: name => first version with it.
my %since = (
    pass => 1_025_005,              # the stream `pass` directive
    virtual_servers => 1_025_005,   # stream server_name, several servers per address
    resolve => 1_027_003,           # `server ... resolve` in open-source stream upstreams
    least_time => 1_031_000,        # the `least_time` balancer in open-source stream upstreams
    proxy_protocol_v2 => 1_031_004, # stream `proxy_protocol v2` (the proxy sends v2 headers)
);

sub has {
    my ($self, $feature) = @_;
    my $v = $since{$feature} // die "unknown feature $feature";
    return $self->nginx_version >= $v;
}

# Why a feature is missing, for skip().
sub lacks_reason {
    my ($self, $feature) = @_;
    my $v = $since{$feature};
    return sprintf "nginx %s has no %s (since %d.%d.%d)", $self->version_text, $feature,
        int($v / 1_000_000), int($v / 1_000) % 1_000, $v % 1_000;
}

sub version_text {
    my $v = $_[0]->nginx_version;
    return join '.', int($v / 1_000_000), int($v / 1_000) % 1_000, $v % 1_000;
}

sub dir { $_[0]{dir} }
sub cli { $_[0]{cli} }
sub repo { $_[0]{repo} }

# A free port on 127.0.0.1, stable per name and distinct from every other name's.
# All probe sockets stay open until the allocation is done, so the kernel cannot hand the
# same number out twice.
sub port {
    my ($self, $name) = @_;
    return $self->{ports}{$name} //= do {
        my %taken = map { $_ => 1 } grep { defined } values %{$self->{ports}};
        my (@held, $p);
        for (1 .. 100) {
            my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
                or die "no free port: $!";
            push @held, $s;
            $p = $s->sockport;
            last unless $taken{$p};
        }
        close $_ for @held;
        $p;
    };
}

# A port where connections are refused: a bound socket that never listens, held open.
sub refused_port {
    my ($self, $name) = @_;
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
        or die "bind: $!";
    push @{$self->{held}}, $s;
    return $self->{ports}{$name} = $s->sockport;
}

sub write_file {
    my ($self, $name, $content, $mode) = @_;
    my $path = "$self->{dir}/$name";
    open my $fh, '>', $path or die "$path: $!";
    binmode $fh;
    print $fh $content;
    close $fh;
    chmod($mode // 0600, $path);
    return $path;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    my $c = <$fh>;
    return $c // '';
}

# An HTTP call through curl to 127.0.0.1:PORT (the 'http' port unless given), with BODY
# (if defined) as a JSON request body: returns (status, body).
sub http_call {
    my ($self, $method, $path, $body, $port) = @_;
    $port //= $self->port('http');
    my @cmd = ('curl', '-s', '-o', "$self->{dir}/api.out", '-w', '%{http_code}', '-X', $method,
        "http://127.0.0.1:$port$path");
    push @cmd, '--data-binary', "\@$self->{dir}/api.in", '-H', 'Content-Type: application/json'
        if defined $body;
    $self->write_file('api.in', $body // '');
    my $r = $self->run_cmd(\@cmd);
    return ($r->{out}, $self->read_file('api.out'));
}

# A public key as the keys API names it in a path: base64url, without padding.
sub urlkey {
    my (undef, $k) = @_;
    $k =~ tr{+/}{-_};
    $k =~ s/=+$//;
    return $k;
}

# Makes <name>.key (mode 0600) and <name>.pub with the CLI; returns the public key.
sub keygen {
    my ($self, $name) = @_;
    my $key = `$self->{cli} keygen`;
    die "keygen failed" if $?;
    $self->write_file("$name.key", $key);
    my $pub = $self->run_cmd([$self->{cli}, 'pubkey'], $key)->{out};
    chomp $pub;
    $self->write_file("$name.pub", "$pub\n", 0644);
    return $pub;
}

sub substitute {
    my ($self, $text) = @_;
    $text =~ s/%%TESTDIR%%/$self->{dir}/g;
    $text =~ s/%%PORT_(\w+)%%/$self->port($1)/ge;
    return $text;
}

sub workers { $_[0]{workers} }

# The load_module lines for TEST_NGINX_LOAD_MODULES, for configs written by hand.
sub preload { join '', map { "load_module $_;\n" } @{$_[0]{load_modules}} }

sub write_config {
    my ($self, $template, $name) = @_;
    $name //= 'nginx.conf';
    my $own = $template =~ /^\s*worker_processes\s+(\d+)/m ? $1 : undef;
    $self->{expect_workers} = $own // $self->{workers};
    my $workers = defined $own ? '' : "worker_processes $self->{workers};";
    my $conf = $self->preload . <<"END" . $self->substitute($template);
load_module $self->{module};
daemon on;
master_process on;
$workers
pid $self->{dir}/logs/nginx.pid;
error_log $self->{dir}/logs/error.log ${\($ENV{TEST_NGINX_LOG_LEVEL} // "info")};
events { worker_connections 1024; }
END
    $self->write_file($name, $conf, 0644);
    return $self;
}

# `nginx -t`: returns (exit code, output).
sub test_config {
    my ($self, $name) = @_;
    $name //= 'nginx.conf';
    my $r = $self->run_cmd([$self->{nginx}, '-p', "$self->{dir}/", '-c', "$self->{dir}/$name", '-t']);
    return ($r->{rc}, $r->{err} . $r->{out});
}

sub run {
    my ($self) = @_;
    my ($rc, $out) = $self->test_config;
    die "nginx -t failed: $out" if $rc;
    my $r = $self->run_cmd([$self->{nginx}, '-p', "$self->{dir}/", '-c', "$self->{dir}/nginx.conf"]);
    die "nginx failed to start: $r->{err}" if $r->{rc};
    $self->{running} = 1;
    # The master binds every socket before it writes the pid file and forks workers, so
    # no probe connection is needed (one would count as a failed handshake).
    for (1 .. 200) {
        last if -s "$self->{dir}/logs/nginx.pid" && $self->worker_pids >= $self->{expect_workers};
        sleep 0.05;
    }
    die "nginx did not start" unless $self->worker_pids;
    # Kept in case the pid file is gone when we stop (temp dir removed first at exit).
    $self->{master} = $self->master_pid;
    return $self;
}

sub master_pid {
    my ($self) = @_;
    my $pid = $self->read_file('logs/nginx.pid');
    chomp $pid;
    return $pid;
}

sub worker_pids {
    my ($self) = @_;
    my $master = $self->master_pid or return ();
    my @pids = map { s/\s+//gr } `ps -o pid= --ppid $master 2>/dev/null`;
    return grep { length } @pids;
}

# The workers as one: sorted pids (same string = no worker died or was replaced), total
# open fds and total RSS (KiB). Connections may land on any worker.
sub worker_set { join ',', sort { $a <=> $b } $_[0]->worker_pids }

sub fd_total {
    my ($self) = @_;
    my $n = 0;
    $n += $self->fd_count($_) for $self->worker_pids;
    return $n;
}

sub rss_total {
    my ($self) = @_;
    my $n = 0;
    $n += $self->rss_kb($_) for $self->worker_pids;
    return $n;
}

sub fd_count {
    my ($self, $pid) = @_;
    opendir my $d, "/proc/$pid/fd" or return -1;
    my @fds = grep { !/^\./ } readdir $d;
    return scalar @fds;
}

sub rss_kb {
    my ($self, $pid) = @_;
    my ($line) = grep { /^VmRSS/ } split /\n/, $self->read_file("/proc/$pid/status");
    return $line =~ /(\d+)/ ? $1 : -1;
}

sub wait_port {
    my ($self, $port) = @_;
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1);
        return 1 if $s;
        sleep 0.05;
    }
    return 0;
}

sub reload {
    my ($self) = @_;
    my %old = map { $_ => 1 } $self->worker_pids;
    my $r = $self->run_cmd([$self->{nginx}, '-p', "$self->{dir}/", '-c', "$self->{dir}/nginx.conf", '-s', 'reload']);
    die "reload failed: $r->{err}" if $r->{rc};
    my @new;
    for (1 .. 200) {
        @new = grep { !$old{$_} } $self->worker_pids;
        last if @new >= $self->{expect_workers};
        sleep 0.05;
    }
    die "no new worker after reload" unless @new;
    # Old workers accept until they act on the signal; wait until they stopped listening.
    for my $pid (keys %old) {
        $self->wait_for(5, sub { $self->error_log =~ /$pid#\d+: gracefully shutting down/ || !kill 0, $pid });
    }
    return @new;
}

sub stop {
    my ($self) = @_;
    return unless $self->{running};
    my $pid = $self->master_pid || $self->{master};
    if ($pid) {
        kill 'QUIT', $pid;
        for (1 .. 100) { last unless kill 0, $pid; sleep 0.05 }
        kill 'TERM', $pid if kill 0, $pid;
    }
    $self->{running} = 0;
}

sub error_log { $_[0]->read_file('logs/error.log') }

# Error-log lines after a mark (a byte offset from error_log_mark).
sub error_log_mark { length $_[0]->error_log }
sub error_log_since { substr($_[0]->error_log, $_[1]) }

# Runs a command with optional stdin bytes; returns {rc, out, err}. Killed after $timeout s.
sub run_cmd {
    my ($self, $cmd, $input, $timeout) = @_;
    $timeout //= 60;
    my $n = ++$self->{n};
    my $base = "$self->{dir}/cmd$$-$n";
    $self->write_file("cmd$$-$n.in", $input // '');
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', "$base.in" or die;
        open STDOUT, '>', "$base.out" or die;
        open STDERR, '>', "$base.err" or die;
        exec @$cmd or die "exec $cmd->[0]: $!";
    }
    my $deadline = time + $timeout;
    my $done;
    while (time < $deadline) {
        $done = waitpid($pid, WNOHANG);
        last if $done == $pid;
        sleep 0.02;
    }
    if (!$done || $done != $pid) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        return {rc => -1, out => $self->read_file("$base.out"), err => "timeout\n" . $self->read_file("$base.err")};
    }
    return {rc => $? >> 8, out => $self->read_file("$base.out"), err => $self->read_file("$base.err")};
}

# The CLI as a NoiseSocket client: returns {rc, out, err}.
sub noise_client {
    my ($self, $port, $input, @opts) = @_;
    return $self->run_cmd([$self->{cli}, 'connect', "127.0.0.1:$port", '-N', @opts], $input);
}

# The Python noiseprotocol peer as a client: returns {rc, out, err}.
sub python_client {
    my ($self, $port, $input, @opts) = @_;
    return $self->run_cmd([$self->{python}, $self->{peer}, 'connect', "127.0.0.1:$port", @opts], $input);
}

# Starts a background process; it is killed when the test ends.
sub spawn {
    my ($self, @cmd) = @_;
    my $pid = $self->fork_helper;
    if (!$pid) {
        exec @cmd or die "exec: $!";
    }
    return $pid;
}

# A plain TCP echo backend on the named port (half-close aware).
# Forks a helper process in its own process group with stdio detached from the test's
# (so prove never waits on it); the group is killed when the test ends.
sub fork_helper {
    my ($self) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', "$self->{dir}/helpers.err";
        return 0;
    }
    push @{$self->{children}}, $pid;
    return $pid;
}

sub echo_backend {
    my ($self, $name) = @_;
    my $port = $self->port($name);
    my $pid = $self->fork_helper;
    if (!$pid) {
        my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 512, ReuseAddr => 1)
            or die "echo backend: $!";
        $SIG{CHLD} = 'IGNORE';
        while (my $c = $l->accept) {
            next if fork;
            my $buf;
            while (sysread($c, $buf, 65536)) {
                my $off = 0;
                while ($off < length $buf) {
                    my $w = syswrite($c, $buf, length($buf) - $off, $off) // exit 0;
                    $off += $w;
                }
            }
            shutdown($c, 1);
            exit 0;
        }
        exit 0;
    }
    $self->wait_port($port);
    return $port;
}

# A plain TCP backend that writes without end to whoever connects.
sub source_backend {
    my ($self, $name) = @_;
    my $port = $self->port($name);
    my $pid = $self->fork_helper;
    if (!$pid) {
        my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 64, ReuseAddr => 1)
            or die "source backend: $!";
        $SIG{CHLD} = 'IGNORE';
        $SIG{PIPE} = 'IGNORE';
        my $chunk = 'z' x 65536;
        while (my $c = $l->accept) {
            next if fork;
            while (defined syswrite($c, $chunk)) { }
            exit 0;
        }
        exit 0;
    }
    $self->wait_port($port);
    return $port;
}

# Waits until `check` is true (polling for up to `secs`); returns its last value.
sub wait_for {
    my ($self, $secs, $check) = @_;
    my $deadline = time + $secs;
    my $v;
    while (1) {
        $v = $check->();
        return $v if $v || time > $deadline;
        sleep 0.05;
    }
}

# The http block that serves noise_status at /metrics on the port named "http", for a
# config: `$t->write_config(<<'END' . NoiseTest::STATUS_HTTP)`.
use constant STATUS_HTTP => "http {\n    access_log off;\n    server {\n"
    . "        listen 127.0.0.1:%%PORT_http%%;\n        location /metrics { noise_status; }\n    }\n}\n";

# The noise_status response (served as STATUS_HTTP says).
sub metrics {
    my ($self) = @_;
    my ($got) = $self->plain_exchange($self->port('http'), "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n",
        keep_open => 1, timeout => 3);
    return $got;
}

# One series' value in a noise_status text (the current one without $text), or undef.
sub series {
    my ($self, $series, $text) = @_;
    $text //= $self->metrics;
    return $text =~ /^\Q$series\E (-?\d+)$/m ? $1 : undef;
}

# A plain TCP client that writes $data (then half-closes unless keep_open) while reading
# whatever comes back, until EOF or timeout. Returns (bytes read, closed by peer).
# `local => ADDR` connects from that address (e.g. 127.0.0.2, to tell a client from nginx).
sub plain_exchange {
    my ($self, $port, $data, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5,
        ($o{local} ? (LocalAddr => $o{local}) : ())) or die "connect: $!";
    binmode $s;
    $s->blocking(0);
    my ($got, $off, $closed, $shut) = ('', 0, 0, 0);
    my $deadline = time + ($o{timeout} // 30);
    while (time < $deadline) {
        my ($rin, $win) = ('', '');
        vec($rin, fileno($s), 1) = 1;
        vec($win, fileno($s), 1) = 1 if $off < length $data;
        select(my $rout = $rin, my $wout = $win, undef, 0.1) or next;
        if ($off < length $data && vec($wout, fileno($s), 1)) {
            my $w = syswrite($s, $data, 65536, $off);
            $off += $w if $w;
        }
        if (!$shut && $off >= length $data && !$o{keep_open}) {
            shutdown($s, 1);
            $shut = 1;
        }
        if (vec($rout, fileno($s), 1)) {
            my $r = sysread($s, my $buf, 65536);
            if (defined $r && $r == 0) { $closed = 1; last }
            if (!defined $r) { next if $!{EAGAIN}; $closed = 1; last }
            $got .= $buf;
        }
    }
    close $s;
    return ($got, $closed);
}

# A TCP backend that answers every connection with $reply (bytes) and then, per $after,
# closes ('close'), stays silent ('stall') or keeps reading. Counts connections in a file.
sub scripted_backend {
    my ($self, $name, $reply, $after) = @_;
    my $port = $self->port($name);
    my $count = "$self->{dir}/$name.count";
    my $pid = $self->fork_helper;
    if (!$pid) {
        my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 64, ReuseAddr => 1)
            or die "scripted backend: $!";
        $SIG{CHLD} = 'IGNORE';
        $SIG{PIPE} = 'IGNORE';
        while (my $c = $l->accept) {
            open my $fh, '>>', $count; print $fh "x\n"; close $fh;
            next if fork;
            syswrite($c, $reply) if length $reply;
            if (($after // '') eq 'stall') { sleep 3600 }
            if (($after // '') eq 'close') { exit 0 }
            my $buf;
            while (sysread($c, $buf, 65536)) {
                open my $rec, '>>', "$self->{dir}/$name.received"; print $rec $buf; close $rec;
            }
            exit 0;
        }
        exit 0;
    }
    $self->wait_port($port);
    return $port;
}

sub count_of {
    my ($self, $name) = @_;
    my $c = $self->read_file("$name.count");
    return scalar(() = $c =~ /x/g);
}

# A raw TCP client: sends bytes, optionally half-closes, then reads until EOF or timeout
# (or, with until_data, until the first bytes arrive); `local` as for plain_exchange.
# Returns (bytes read, closed by peer).
sub raw_exchange {
    my ($self, $port, $bytes, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 5,
        ($o{local} ? (LocalAddr => $o{local}) : ())) or die "connect: $!";
    binmode $s;
    syswrite($s, $bytes) if length $bytes;
    shutdown($s, 1) if $o{half_close};
    my ($got, $buf, $closed) = ('', '', 0);
    my $deadline = time + ($o{timeout} // 5);
    my $rin = '';
    vec($rin, fileno($s), 1) = 1;
    while (time < $deadline) {
        my $n = select(my $rout = $rin, undef, undef, 0.1);
        next unless $n;
        my $r = sysread($s, $buf, 65536);
        if (!$r) { $closed = 1; last }
        $got .= $buf;
        last if $o{until_data};
    }
    close $s;
    return ($got, $closed);
}

sub DESTROY {
    my ($self) = @_;
    # Forked helpers inherit the object; only the process that made it cleans up.
    return if $$ != $self->{owner};
    local $?;    # waitpid below must not become the test's exit status
    $self->stop;
    for my $pid (@{$self->{children}}) {
        kill 'KILL', -$pid;    # the helper's whole process group
        waitpid($pid, 0);
    }
}

1;
