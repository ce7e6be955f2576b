//! Socket addresses as the module keeps them: the raw bytes of a `sockaddr`, compared with
//! nginx's own `ngx_cmp_sockaddr` (family, address and, when asked, port; IPv6 flowinfo and
//! scope are not part of an address there either).

use nginx_sys::{ngx_cmp_sockaddr, ngx_uint_t, sockaddr, socklen_t, NGX_OK};

/// A copy of the `socklen` bytes at `sa`.
///
/// # Safety
/// `sa` must point at `len` readable bytes (a `sockaddr` and its length, as nginx keeps
/// them in `ngx_addr_t`, `ngx_listening_t` and peers).
pub unsafe fn copy(sa: *const sockaddr, len: socklen_t) -> Vec<u8> {
    // SAFETY: caller guarantees len readable bytes.
    unsafe { std::slice::from_raw_parts(sa.cast::<u8>(), len as usize) }.to_vec()
}

/// The raw bytes at `sa`, borrowed.
///
/// # Safety
/// As [`copy`], for as long as the returned slice lives.
pub unsafe fn view<'a>(sa: *const sockaddr, len: socklen_t) -> &'a [u8] {
    // SAFETY: caller guarantees len readable bytes for 'a.
    unsafe { std::slice::from_raw_parts(sa.cast::<u8>(), len as usize) }
}

/// An IPv4 or IPv6 address with its port, as text ("10.0.0.5:8000", "\[::1\]:8000"), for
/// messages; `None` for other families.
pub fn text(raw: &[u8]) -> Option<String> {
    if !complete(raw) {
        return None;
    }
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let ip: std::net::IpAddr = match i32::from(u16::from_ne_bytes([raw[0], raw[1]])) {
        libc::AF_INET => <[u8; 4]>::try_from(&raw[4..8]).ok()?.into(),
        libc::AF_INET6 => <[u8; 16]>::try_from(&raw[8..24]).ok()?.into(),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// Whether the bytes hold a whole `sockaddr` of their family (what `ngx_cmp_sockaddr` reads).
fn complete(raw: &[u8]) -> bool {
    let Some(family) = raw.get(..2) else {
        return false;
    };
    let need = match i32::from(u16::from_ne_bytes([family[0], family[1]])) {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => 2,
    };
    raw.len() >= need
}

fn compare(a: &[u8], b: &[u8], with_port: bool) -> bool {
    // ngx_cmp_sockaddr reads the family first and then only what that family's struct
    // holds; anything shorter than a family is no address.
    if !complete(a) || !complete(b) {
        return false;
    }
    // SAFETY: both slices hold the socklen bytes of a sockaddr that nginx produced (parsed
    // or accepted); ngx_cmp_sockaddr only reads them.
    let rc = unsafe {
        ngx_cmp_sockaddr(
            a.as_ptr().cast_mut().cast(),
            a.len() as socklen_t,
            b.as_ptr().cast_mut().cast(),
            b.len() as socklen_t,
            ngx_uint_t::from(with_port),
        )
    };
    rc == NGX_OK as isize
}

/// Same family, address and port.
pub fn same_address(a: &[u8], b: &[u8]) -> bool {
    compare(a, b, true)
}

/// Same family and port, whatever the address (a wildcard socket and a specific one).
pub fn same_port(a: &[u8], b: &[u8]) -> bool {
    // The port sits at the same offset (2..4) in sockaddr_in and sockaddr_in6.
    a.len() >= 4 && b.len() >= 4 && a[..4] == b[..4]
}
