//! `inferlane top`: a live terminal view of the running daemon (classes,
//! providers, uplinks, the busiest flows), refreshed from the control socket.
//!
//! Plain ratatui over crossterm: no mouse, no colours that carry meaning alone
//! (DOWN is also written in capitals), so it reads the same over SSH and on a
//! serial console. `--once` draws one frame into ratatui's `TestBackend` and
//! prints it as text, without touching the terminal's mode.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};

use super::flows::FlowInfo;
use super::{client, ControlError, Request, Response, Status};

/// What one frame shows: the latest answers, and the uplink counters of the
/// refresh before to turn them into rates.
#[derive(Default)]
pub struct Model {
    pub status: Option<Status>,
    pub flows: Vec<FlowInfo>,
    /// The last refresh's error, shown in the footer (the last good data stays).
    pub error: Option<String>,
    /// Per uplink: (upload, download) bytes per second since the last refresh.
    rates: BTreeMap<String, (f64, f64)>,
    last: Option<(Instant, BTreeMap<String, (u64, u64)>)>,
}

impl Model {
    /// Ask the daemon for status and flows; keep the old data on failure.
    pub fn refresh(&mut self, socket: &Path) {
        match fetch(socket) {
            Ok((status, flows)) => {
                self.update(status, flows, Instant::now());
                self.error = None;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// Take a new snapshot taken at `now`.
    pub fn update(&mut self, status: Status, flows: Vec<FlowInfo>, now: Instant) {
        let totals: BTreeMap<String, (u64, u64)> =
            status.uplinks.iter().map(|u| (u.name.clone(), (u.counters.up_bytes, u.counters.down_bytes))).collect();
        self.rates.clear();
        if let Some((then, before)) = &self.last {
            let secs = now.duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                for (name, (up, down)) in &totals {
                    if let Some((bup, bdown)) = before.get(name) {
                        // A restarted daemon starts its counters again: no rate then.
                        if up >= bup && down >= bdown {
                            self.rates.insert(name.clone(), ((up - bup) as f64 / secs, (down - bdown) as f64 / secs));
                        }
                    }
                }
            }
        }
        self.last = Some((now, totals));
        self.status = Some(status);
        self.flows = flows;
    }
}

fn fetch(socket: &Path) -> Result<(Status, Vec<FlowInfo>), ControlError> {
    let status = match client::request(socket, &Request::Status)? {
        Response::Status(s) => s,
        _ => return Err(unexpected(socket)),
    };
    let flows = match client::request(socket, &Request::Flows)? {
        Response::Flows { flows } => flows,
        _ => return Err(unexpected(socket)),
    };
    Ok((status, flows))
}

fn unexpected(socket: &Path) -> ControlError {
    ControlError::Remote { path: socket.display().to_string(), message: "unexpected answer".into() }
}

/// 1234567 → "1.2M"; bytes in powers of 1024 would read oddly next to link rates.
pub fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

fn ms(us: Option<u64>) -> String {
    us.map(|u| format!("{:.1}", u as f64 / 1000.0)).unwrap_or_else(|| "-".into())
}

#[derive(Default)]
struct Group {
    flows: u64,
    up: u64,
    down: u64,
    streaming: u64,
    rtt: Vec<u64>,
    ttfb: Vec<u64>,
}

fn median(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 0 { (v[m - 1] + v[m]) / 2 } else { v[m] })
}

fn group(flows: &[FlowInfo], key: impl Fn(&FlowInfo) -> String) -> Vec<(String, Group)> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for f in flows {
        let g = groups.entry(key(f)).or_default();
        g.flows += 1;
        g.up += f.up_bytes;
        g.down += f.down_bytes;
        g.streaming += u64::from(f.streaming);
        g.rtt.extend(f.handshake_rtt_us);
        g.ttfb.extend(f.ttfb_us);
    }
    let mut out: Vec<(String, Group)> = groups.into_iter().collect();
    out.sort_by_key(|(_, g)| std::cmp::Reverse(g.up + g.down));
    out
}

fn header(cells: &[&str]) -> Row<'static> {
    Row::new(cells.iter().map(|c| c.to_string()).collect::<Vec<_>>()).style(Style::default().add_modifier(Modifier::BOLD))
}

/// Draw the whole view.
pub fn draw(frame: &mut Frame, model: &Model) {
    let Some(status) = &model.status else {
        let text = model.error.as_deref().unwrap_or("waiting for the daemon...");
        frame.render_widget(Paragraph::new(text.to_string()).block(Block::bordered().title(" inferlane top ")), frame.area());
        return;
    };
    let flows = &model.flows;
    let uplink_rows = status.uplinks.len().max(1) as u16 + 3;
    let [top, uplinks, middle, busiest, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(uplink_rows),
        Constraint::Length(8),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let ft = &status.flow_table;
    let title = format!(
        "inferlane {} ({}) pid {}  flows {} live of {} ({} created, {} evicted)  blocked pkts {}",
        status.version, status.mode, status.pid, ft.live, ft.size, ft.stats.created, ft.evicted, ft.stats.blocked
    );
    frame.render_widget(Paragraph::new(Line::from(title).style(Style::default().add_modifier(Modifier::BOLD))), top);

    draw_uplinks(frame, uplinks, status, model);
    let [classes, providers] = Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(middle);
    draw_classes(frame, classes, flows);
    draw_providers(frame, providers, flows);
    draw_busiest(frame, busiest, flows);

    let foot = match &model.error {
        Some(e) => format!("q: quit | refresh failed: {e}"),
        None => "q: quit | refresh 1s | bytes of live flows; uplink bytes since the daemon started".to_string(),
    };
    frame.render_widget(Paragraph::new(foot), footer);
}

fn draw_uplinks(frame: &mut Frame, area: Rect, status: &Status, model: &Model) {
    let mut rows = Vec::new();
    for u in &status.uplinks {
        let (rup, rdown) = model.rates.get(&u.name).copied().unwrap_or((0.0, 0.0));
        let row = Row::new(vec![
            u.name.clone(),
            u.interface.clone(),
            if u.up { "up".to_string() } else { "DOWN".to_string() },
            u.flows.to_string(),
            human(u.counters.up_bytes as f64),
            human(u.counters.down_bytes as f64),
            format!("{}b/s", human(rup * 8.0)),
            format!("{}b/s", human(rdown * 8.0)),
            u.downs.to_string(),
            if u.carries.is_empty() { "-".to_string() } else { u.carries.join(",") },
            u.reason.clone(),
        ]);
        rows.push(if u.up { row } else { row.style(Style::default().add_modifier(Modifier::REVERSED)) });
    }
    if status.uplinks.is_empty() {
        rows.push(Row::new(vec!["(no uplinks managed: observe mode or none configured)".to_string()]));
    }
    let widths = [
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(6),
        Constraint::Length(18),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["uplink", "iface", "state", "flows", "up B", "down B", "up rate", "down rate", "downs", "carries", "why"]))
        .block(Block::bordered().title(" uplinks "));
    frame.render_widget(table, area);
}

fn draw_classes(frame: &mut Frame, area: Rect, flows: &[FlowInfo]) {
    let rows: Vec<Row> = group(flows, |f| f.class.clone().unwrap_or_else(|| "unclassified".into()))
        .into_iter()
        .map(|(name, g)| Row::new(vec![name, g.flows.to_string(), human(g.up as f64), human(g.down as f64), g.streaming.to_string()]))
        .collect();
    let widths = [Constraint::Min(12), Constraint::Length(6), Constraint::Length(8), Constraint::Length(8), Constraint::Length(6)];
    let table = Table::new(rows, widths)
        .header(header(&["class", "flows", "up B", "down B", "strm"]))
        .block(Block::bordered().title(" classes (live flows) "));
    frame.render_widget(table, area);
}

fn draw_providers(frame: &mut Frame, area: Rect, flows: &[FlowInfo]) {
    let rows: Vec<Row> = group(flows, |f| f.provider.clone().unwrap_or_else(|| "-".into()))
        .into_iter()
        .map(|(name, mut g)| {
            let (rtt, ttfb) = (median(&mut g.rtt), median(&mut g.ttfb));
            Row::new(vec![name, g.flows.to_string(), human(g.up as f64), human(g.down as f64), ms(rtt), ms(ttfb)])
        })
        .collect();
    let widths = [
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["provider", "flows", "up B", "down B", "rtt ms", "ttfb ms"]))
        .block(Block::bordered().title(" providers (live flows, medians) "));
    frame.render_widget(table, area);
}

fn draw_busiest(frame: &mut Frame, area: Rect, flows: &[FlowInfo]) {
    let mut sorted: Vec<&FlowInfo> = flows.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.up_bytes + f.down_bytes));
    let endpoint = |ip: std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    let rows: Vec<Row> = sorted
        .into_iter()
        .take(area.height.saturating_sub(3) as usize)
        .map(|f| {
            let class = if f.blocked { "BLOCKED".to_string() } else { f.class.clone().unwrap_or_else(|| "-".into()) };
            let via = if f.pending { "pending".to_string() } else { f.source.clone().unwrap_or_else(|| "-".into()) };
            Row::new(vec![
                f.proto.clone(),
                endpoint(f.client, f.client_port),
                endpoint(f.remote, f.remote_port),
                f.provider.clone().unwrap_or_else(|| "-".into()),
                via,
                class,
                human(f.up_bytes as f64),
                human(f.down_bytes as f64),
                ms(f.handshake_rtt_us),
                ms(f.ttfb_us),
                format!("{:.0}s{}", f.age_ms as f64 / 1000.0, if f.streaming { " strm" } else { "" }),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(6),
        Constraint::Length(22),
        Constraint::Min(22),
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    let table = Table::new(rows, widths)
        .header(header(&["proto", "client", "remote", "provider", "via", "class", "up B", "down B", "rtt ms", "ttfb ms", "age"]))
        .block(Block::bordered().title(format!(" busiest flows ({} live) ", flows.len())));
    frame.render_widget(table, area);
}

/// One frame as plain text (`--once`): drawn into a `TestBackend` of the given
/// size, trailing spaces trimmed.
pub fn render_text(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("the test backend has a size");
    terminal.draw(|f| draw(f, model)).expect("the test backend does not fail");
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The interactive view until q, Esc or Ctrl-C. The terminal is restored on
/// every way out: return, error (the guard) and panic (ratatui's hook).
pub fn run(socket: &Path, interval: Duration) -> std::io::Result<()> {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            ratatui::restore();
        }
    }
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut model = Model::default();
    loop {
        model.refresh(socket);
        terminal.draw(|f| draw(f, &model))?;
        let next = Instant::now() + interval;
        // Keys until the next refresh; a resize redraws at once.
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|f| draw(f, &model))?;
                }
                _ => {}
            }
        }
    }
}
