//! Incremental Internet checksum update (RFC 1624: HC' = ~(~HC + ~m + m')).
//! Words are summed in the byte order they are read in; one's-complement sums are
//! byte-order independent as long as every word is read the same way.

pub struct Csum(u32);

impl Csum {
    #[inline(always)]
    pub fn start(check: u16) -> Self {
        Csum(!check as u32)
    }

    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        let old = !old;
        self.0 += (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16);
    }

    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u32 + new as u32;
    }

    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }
}
