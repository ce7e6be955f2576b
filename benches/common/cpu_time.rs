//! CPU time for the benches: what bench.py measures of nginx's workers (utime + stime), so
//! that cycles stolen by neighbours on a shared machine count in neither.

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

fn seconds(clock: i32) -> f64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    let rc = unsafe { clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU time of this thread, in seconds (Linux's CLOCK_THREAD_CPUTIME_ID).
#[allow(dead_code)]
pub fn thread_seconds() -> f64 {
    seconds(3)
}

/// CPU time of this process, in seconds (Linux's CLOCK_PROCESS_CPUTIME_ID).
#[allow(dead_code)]
pub fn process_seconds() -> f64 {
    seconds(2)
}
