//! vNodes' virtual IP addresses: a vNode's vIP is the base of the manager's
//! `--vip-range` plus its id, so it needs no record and is never handed out
//! twice.

/// A range of virtual IPv4 addresses, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    size: u64,
}

impl std::str::FromStr for VipRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 range like 10.77.0.0/16");
        let (addr, bits) = s.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: the prefix must be /8 to /30"));
        }
        let size = 1u64 << (32 - bits);
        let base = u32::from(addr) & !((size - 1) as u32);
        Ok(VipRange { base, size })
    }
}

impl VipRange {
    /// The vIP of vNode `id`: the range's base plus the id (the network and
    /// broadcast addresses are never used).
    pub fn vip(&self, id: u32) -> Option<std::net::Ipv4Addr> {
        (u64::from(id) < self.size - 1).then(|| std::net::Ipv4Addr::from(self.base + id))
    }
}

#[cfg(test)]
mod tests {
    use super::VipRange;

    #[test]
    fn vips_come_from_the_range() {
        let r: VipRange = "10.77.0.0/16".parse().unwrap();
        assert_eq!(r.vip(1).unwrap().to_string(), "10.77.0.1");
        assert_eq!(r.vip(300).unwrap().to_string(), "10.77.1.44");
        assert!(r.vip(65535).is_none());
        let r: VipRange = "192.168.5.77/30".parse().unwrap();
        assert_eq!(r.vip(1).unwrap().to_string(), "192.168.5.77");
        assert_eq!(r.vip(2).unwrap().to_string(), "192.168.5.78");
        assert!(r.vip(3).is_none());
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/16", "10.0.0.0/4"] {
            assert!(bad.parse::<VipRange>().is_err(), "{bad}");
        }
    }
}
