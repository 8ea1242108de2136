//! Guest NIC configuration with the classic ioctls: IPv4 addresses, MTU, name, routes.
//!
//! Done by hand because the guest is a static PID 1 with no netlink library worth its weight
//! (rtnetlink needs tokio); the ioctls cover exactly what a CNI-configured pod needs.

use crate::sys;
use moat_vm_proto::{Interface, NetworkConfig, Route};
use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

fn sock() -> io::Result<i32> {
    // SAFETY: plain socket call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(s)
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is the documented
    // way to pass an IPv4 address through the generic sockaddr of ifreq/rtentry.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(s: i32, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> io::Result<()> {
    // SAFETY: arg points to the struct the request expects, alive for the call.
    if unsafe { libc::ioctl(s, req, arg) } < 0 {
        Err(sys::ctx("ioctl", what, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// An interface address or route destination, "10.42.0.5/24" (host bits kept). `ipnet`
/// parses, as on the host side (moat-api's CIDR module is not linked into the guest to keep
/// its dependencies small); the error names the text.
pub fn parse_cidr(c: &str) -> io::Result<Ipv4Net> {
    c.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad IPv4 CIDR {c:?}")))
}

fn set_up(s: i32, name: &str, up: bool) -> io::Result<()> {
    let mut r = ifreq(name)?;
    ioctl(s, libc::SIOCGIFFLAGS, &mut r as *mut _ as *mut _, name)?;
    // SAFETY: reading/writing the flags member of the union the ioctl just filled.
    unsafe {
        if up {
            r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        } else {
            r.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        }
    }
    ioctl(s, libc::SIOCSIFFLAGS, &mut r as *mut _ as *mut _, name)
}

fn by_mac(mac: &str) -> io::Result<String> {
    let want = mac.to_ascii_lowercase();
    for ent in
        std::fs::read_dir("/sys/class/net").map_err(|e| sys::ctx("listing", "/sys/class/net", e))?
    {
        let ent = ent?;
        let addr = std::fs::read_to_string(ent.path().join("address")).unwrap_or_default();
        if addr.trim() == want {
            return Ok(ent.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no guest interface has MAC {mac}"),
    ))
}

fn configure_interface(s: i32, i: &Interface) -> io::Result<()> {
    let cur = by_mac(i.current_mac.as_deref().unwrap_or(&i.mac))?;
    set_up(s, &cur, false)?;
    if i.current_mac.as_deref().is_some_and(|m| m != i.mac) {
        let mut r = ifreq(&cur)?;
        let mut hw: libc::sockaddr = unsafe_zeroed_sockaddr();
        hw.sa_family = libc::ARPHRD_ETHER;
        for (n, b) in parse_mac(&i.mac)?.iter().enumerate() {
            hw.sa_data[n] = *b as libc::c_char;
        }
        r.ifr_ifru.ifru_hwaddr = hw;
        ioctl(s, libc::SIOCSIFHWADDR, &mut r as *mut _ as *mut _, &i.mac)?;
    }
    if cur != i.name {
        let mut r = ifreq(&cur)?;
        let new = ifreq(&i.name)?;
        r.ifr_ifru.ifru_newname = new.ifr_name;
        ioctl(s, libc::SIOCSIFNAME, &mut r as *mut _ as *mut _, &i.name)?;
    }
    if i.mtu > 0 {
        let mut r = ifreq(&i.name)?;
        r.ifr_ifru.ifru_mtu = i.mtu as libc::c_int;
        ioctl(s, libc::SIOCSIFMTU, &mut r as *mut _ as *mut _, &i.name)?;
    }
    // The ioctl interface holds one primary address per name; extra ones go on aliases.
    for (n, cidr) in i.addresses.iter().enumerate() {
        let net = parse_cidr(cidr)?;
        let name = if n == 0 {
            i.name.clone()
        } else {
            format!("{}:{n}", i.name)
        };
        let mut r = ifreq(&name)?;
        r.ifr_ifru.ifru_addr = sockaddr(net.addr());
        ioctl(s, libc::SIOCSIFADDR, &mut r as *mut _ as *mut _, cidr)?;
        let mut r = ifreq(&name)?;
        r.ifr_ifru.ifru_netmask = sockaddr(net.netmask());
        ioctl(s, libc::SIOCSIFNETMASK, &mut r as *mut _ as *mut _, cidr)?;
    }
    set_up(s, &i.name, true)
}

fn unsafe_zeroed_sockaddr() -> libc::sockaddr {
    // SAFETY: sockaddr is plain old data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn parse_mac(m: &str) -> io::Result<[u8; 6]> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad MAC address {m:?}"),
        )
    };
    let parts: Vec<u8> = m
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| bad())
}

fn add_route(s: i32, r: &Route) -> io::Result<()> {
    let dst = if r.dest == "default" {
        Ipv4Net::default()
    } else {
        parse_cidr(&r.dest)?
    };
    // SAFETY: rtentry is plain old data; all-zero is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(dst.addr());
    rt.rt_genmask = sockaddr(dst.netmask());
    rt.rt_flags = libc::RTF_UP;
    if let Some(gw) = &r.gateway {
        let g: Ipv4Addr = gw.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad gateway {gw:?}"))
        })?;
        rt.rt_gateway = sockaddr(g);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    let dev = sys::cstr(&r.device)?;
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    match ioctl(s, libc::SIOCADDRT, &mut rt as *mut _ as *mut _, &r.dest) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

pub fn loopback_up() -> io::Result<()> {
    let s = sock()?;
    let r = set_up(s, "lo", true);
    sys::close(s);
    r
}

pub fn configure(cfg: &NetworkConfig) -> io::Result<()> {
    let s = sock()?;
    let r = (|| {
        for i in &cfg.interfaces {
            configure_interface(s, i)?;
        }
        // Routes with a gateway need the on-link route to it first; the kernel added the
        // subnet routes with the addresses, so gateway-less routes go first, then the rest.
        for r in cfg.routes.iter().filter(|r| r.gateway.is_none()) {
            add_route(s, r)?;
        }
        for r in cfg.routes.iter().filter(|r| r.gateway.is_some()) {
            add_route(s, r)?;
        }
        Ok(())
    })();
    sys::close(s);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_or_are_refused() {
        assert_eq!(
            parse_mac("02:6d:6f:61:74:0a").unwrap(),
            [2, 0x6d, 0x6f, 0x61, 0x74, 0x0a]
        );
        assert!(parse_mac("02:6d:6f:61:74").is_err());
        assert!(parse_mac("zz:6d:6f:61:74:0a").is_err());
    }

    #[test]
    fn cidrs_and_masks() {
        let n = parse_cidr("10.42.0.5/24").unwrap();
        assert_eq!(
            (n.addr(), n.prefix_len()),
            ("10.42.0.5".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.42.0.5").is_err());
        assert!(parse_cidr("10.42.0.5/33").is_err());
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(Ipv4Net::default().netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            parse_cidr("10.0.0.1/32").unwrap().netmask(),
            Ipv4Addr::BROADCAST
        );
    }
}
