//! What IPFIX and NetFlow v9 share: filling messages of sets with records under a
//! length limit, and deciding when templates are due again.
//!
//! Headers are left as zeros here and written by each format once the messages are
//! complete, because IPFIX's sequence number depends on the records of earlier
//! messages of the same call.

/// What a record is, for the counts in the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Template,
    OptionsData,
    FlowData,
}

/// One message being built or finished.
#[derive(Debug, Default)]
pub(crate) struct Message {
    pub buf: Vec<u8>,
    /// Template and options-template records.
    pub templates: u32,
    pub options_data: u32,
    pub flow_data: u32,
}

impl Message {
    pub fn records(&self) -> u32 {
        self.templates + self.options_data + self.flow_data
    }
}

pub(crate) struct Packer {
    max_len: usize,
    header_len: usize,
    /// NetFlow v9 pads each flowset to 4 bytes (RFC 3954 §5.3); IPFIX needs none.
    pad_sets: bool,
    done: Vec<Message>,
    cur: Option<Message>,
    /// Offset and id of the set being filled in `cur`.
    set: Option<(usize, u16)>,
}

impl Packer {
    pub fn new(max_len: usize, header_len: usize, pad_sets: bool) -> Packer {
        Packer { max_len, header_len, pad_sets, done: Vec::new(), cur: None, set: None }
    }


    /// Closes the current message (if any) and starts an empty one.
    pub fn open(&mut self) {
        self.close();
        let mut buf = Vec::with_capacity(self.max_len);
        buf.resize(self.header_len, 0);
        self.cur = Some(Message { buf, ..Message::default() });
    }

    pub fn close(&mut self) {
        self.close_set();
        if let Some(m) = self.cur.take() {
            self.done.push(m);
        }
    }

    fn padded(&self, n: usize) -> usize {
        if self.pad_sets {
            n.div_ceil(4) * 4
        } else {
            n
        }
    }

    /// Whether a record of `len` bytes fits in the current message, in the open set of
    /// `set_id` or, when `own_set` or another set is open, in a new set.
    pub fn fits(&self, set_id: u16, len: usize, own_set: bool) -> bool {
        let Some(m) = &self.cur else { return false };
        let total = match self.set {
            Some((start, id)) if id == set_id && !own_set => start + self.padded(m.buf.len() - start + len),
            Some((start, _)) => start + self.padded(m.buf.len() - start) + self.padded(4 + len),
            None => m.buf.len() + self.padded(4 + len),
        };
        total <= self.max_len
    }

    /// Appends a record; the caller has checked `fits`.
    pub fn push(&mut self, set_id: u16, record: &[u8], kind: Kind, own_set: bool) {
        debug_assert!(self.fits(set_id, record.len(), own_set));
        let continue_set = matches!(self.set, Some((_, id)) if id == set_id && !own_set);
        if !continue_set {
            self.close_set();
            let m = self.cur.as_mut().expect("an open message");
            self.set = Some((m.buf.len(), set_id));
            m.buf.extend_from_slice(&set_id.to_be_bytes());
            m.buf.extend_from_slice(&[0, 0]);
        }
        let m = self.cur.as_mut().expect("an open message");
        m.buf.extend_from_slice(record);
        match kind {
            Kind::Template => m.templates += 1,
            Kind::OptionsData => m.options_data += 1,
            Kind::FlowData => m.flow_data += 1,
        }
    }

    fn close_set(&mut self) {
        let Some((start, _)) = self.set.take() else { return };
        let pad = self.pad_sets;
        let m = self.cur.as_mut().expect("a set lives in an open message");
        if pad {
            let len = m.buf.len() - start;
            m.buf.resize(start + len.div_ceil(4) * 4, 0);
        }
        let len = (m.buf.len() - start) as u16;
        m.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn finish(mut self) -> Vec<Message> {
        self.close();
        self.done
    }
}

/// When templates and options go out again: in the first message, then after
/// `every_packets` messages or `every_ms` milliseconds, whichever comes first. A
/// collector that starts (or restarts) after us learns the templates within that.
#[derive(Debug, Clone)]
pub(crate) struct TemplateSchedule {
    pub every_packets: u32,
    pub every_ms: u64,
    last_ms: Option<u64>,
    since: u32,
}

impl TemplateSchedule {
    pub fn new(every_packets: u32, every_ms: u64) -> TemplateSchedule {
        TemplateSchedule { every_packets, every_ms, last_ms: None, since: 0 }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        match self.last_ms {
            None => true,
            Some(last) => self.since >= self.every_packets || now_ms.saturating_sub(last) >= self.every_ms,
        }
    }

    /// A message starts; returns whether it must carry the templates.
    pub fn start_message(&mut self, now_ms: u64) -> bool {
        let due = self.due(now_ms);
        if due {
            self.last_ms = Some(now_ms);
            self.since = 0;
        }
        self.since += 1;
        due
    }

    /// A message that continues a template block (which did not fit in one message).
    pub fn continue_message(&mut self) {
        self.since += 1;
    }

    /// Sends the templates again with the next message (after a change of interfaces or
    /// applications).
    pub fn force(&mut self) {
        self.last_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_sets_are_multiples_of_four_and_lengths_are_written() {
        let mut p = Packer::new(100, 4, true);
        p.open();
        assert!(p.fits(256, 5, false));
        p.push(256, &[1, 2, 3, 4, 5], Kind::FlowData, false);
        p.push(256, &[6, 7, 8, 9, 10], Kind::FlowData, false);
        p.push(257, &[11], Kind::FlowData, false);
        let msgs = p.finish();
        // header 4 | set 256: 4 + 10 data + 2 pad = 16 | set 257: 4 + 1 + 3 pad = 8
        let expected: Vec<u8> = [
            vec![0, 0, 0, 0],
            vec![1, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0],
            vec![1, 1, 0, 8, 11, 0, 0, 0],
        ]
        .concat();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].buf, expected, "expected {expected:?}, saw {:?}", msgs[0].buf);
        assert_eq!(msgs[0].flow_data, 3);
    }

    #[test]
    fn fits_counts_the_padding_and_the_new_set_header() {
        let mut p = Packer::new(16, 4, true);
        p.open();
        p.push(256, &[0; 5], Kind::FlowData, false); // 4 + 4 + 5 → padded 16
        assert!(p.fits(256, 3, false), "8 bytes of data pad to 8: 16 total fits");
        assert!(!p.fits(256, 4, false), "9 bytes of data pad to 12: 20 total does not fit");
        assert!(!p.fits(257, 1, false), "a new set needs 8 more bytes");
    }

    #[test]
    fn schedule_by_count_and_time() {
        let mut s = TemplateSchedule::new(3, 1000);
        let seen: Vec<bool> = (0..7).map(|_| s.start_message(0)).collect();
        assert_eq!(seen, [true, false, false, true, false, false, true]);
        assert!(!s.start_message(999), "999 ms after the last templates: not due");
        assert!(s.start_message(1000), "1000 ms after the last templates: due");
        s.force();
        assert!(s.start_message(1001), "forced: due");
    }
}

/// A template, options template or options data record, and how it is packed.
pub(crate) struct Item {
    pub set: u16,
    pub bytes: Vec<u8>,
    pub kind: Kind,
    pub own_set: bool,
}

/// Opens a message; when templates are due they go first, in order, spilling
/// into further messages when they do not fit one.
pub(crate) fn open_message(p: &mut Packer, schedule: &mut TemplateSchedule, items: &[Item], now_ms: u64) {
    p.open();
    if schedule.start_message(now_ms) {
        for item in items {
            if !p.fits(item.set, item.bytes.len(), item.own_set) {
                p.open();
                schedule.continue_message();
            }
            p.push(item.set, &item.bytes, item.kind, item.own_set);
        }
    }
}

/// The data set (template id) and fields of one address family's records.
pub(crate) struct DataSet<'a> {
    pub set: u16,
    pub fields: &'a [super::fields::Field],
}

/// Packs flow records into messages, IPv4 ones into `v4`'s set and IPv6 ones into
/// `v6`'s, opening messages (templates first when due) as they fill; records
/// without a usable address pair are counted in `skipped`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_records(
    p: &mut Packer,
    schedule: &mut TemplateSchedule,
    items: &[Item],
    now_ms: u64,
    records: &[super::record::FlowRecord],
    skipped: &mut u64,
    (v4, v6): (DataSet<'_>, DataSet<'_>),
    boot_ms: u64,
) {
    if records.is_empty() && schedule.due(now_ms) {
        open_message(p, schedule, items, now_ms);
    }
    let mut scratch = Vec::with_capacity(128);
    for rec in records {
        let Some(addrs) = rec.addrs() else {
            *skipped += 1;
            continue;
        };
        let data = match addrs {
            super::record::Addrs::V4(..) => &v4,
            super::record::Addrs::V6(..) => &v6,
        };
        scratch.clear();
        super::fields::write_record(&mut scratch, data.fields, rec, addrs, boot_ms);
        if !p.fits(data.set, scratch.len(), false) {
            open_message(p, schedule, items, now_ms);
            if !p.fits(data.set, scratch.len(), false) {
                p.open();
                schedule.continue_message();
            }
        }
        p.push(data.set, &scratch, Kind::FlowData, false);
    }
}
