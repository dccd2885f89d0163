//! `lego top` on a terminal (ratatui over crossterm): the tables of
//! [`super::text`] in boxes, redrawn as snapshots arrive, fitted to the
//! window (80x24 shows every part). Keys: `s` sorts the jobs by the next
//! column, up/down (or k/j) pick a job, Enter shows or hides the picked
//! job's fault-latency histogram, `q` (or Esc, Ctrl-C) quits.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::Result;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

use super::model::{self, octaves, Snapshot, SortBy, View};
use super::text;

/// What the keys have chosen.
#[derive(Default)]
struct Ui {
    sort: SortBy,
    /// The picked job, by id (kept across refreshes and re-sorts).
    picked: Option<u64>,
    histogram: bool,
}

impl Ui {
    /// Moves the pick by `step` rows within `v`'s jobs.
    fn pick(&mut self, v: &View, step: isize) {
        if v.jobs.is_empty() {
            self.picked = None;
            return;
        }
        let at = self
            .picked
            .and_then(|id| v.jobs.iter().position(|j| j.id == id));
        let next = match at {
            None => 0,
            Some(i) => (i as isize + step).clamp(0, v.jobs.len() as isize - 1) as usize,
        };
        self.picked = Some(v.jobs[next].id);
    }
}

/// Runs the view until `q`; `rx` brings snapshots (or why one failed).
pub fn run(rx: Receiver<Result<Snapshot, String>>) -> Result<()> {
    let mut terminal = ratatui::try_init()?;
    let r = run_on(&mut terminal, rx);
    ratatui::restore();
    r
}

fn run_on(
    terminal: &mut ratatui::DefaultTerminal,
    rx: Receiver<Result<Snapshot, String>>,
) -> Result<()> {
    let mut ui = Ui::default();
    // Rates are taken over the last few snapshots (about 3 s): steadier
    // than over one refresh.
    let mut window: std::collections::VecDeque<Snapshot> = std::collections::VecDeque::new();
    let mut error: Option<String> = None;
    loop {
        while let Ok(got) = rx.try_recv() {
            match got {
                Ok(s) => {
                    window.push_back(s);
                    while window.len() > 4 {
                        window.pop_front();
                    }
                    error = None;
                }
                Err(e) => error = Some(e),
            }
        }
        let view = window.back().map(|c| {
            let prev = (window.len() > 1).then(|| &window[0]);
            model::view(prev, c, ui.sort)
        });
        if let Some(v) = &view {
            if ui
                .picked
                .is_some_and(|id| !v.jobs.iter().any(|j| j.id == id))
            {
                ui.picked = None;
                ui.histogram = false;
            }
        }
        terminal.draw(|f| draw(f, view.as_ref(), &ui, error.as_deref()))?;
        if !event::poll(Duration::from_millis(200))? {
            continue;
        }
        let Event::Key(k) = event::read()? else {
            continue;
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
            KeyCode::Char('s') => ui.sort = ui.sort.next(),
            KeyCode::Down | KeyCode::Char('j') => {
                if let Some(v) = &view {
                    ui.pick(v, 1)
                }
            }
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(v) = &view {
                    ui.pick(v, -1)
                }
            }
            KeyCode::Enter => {
                if ui.picked.is_none() {
                    if let Some(v) = &view {
                        ui.pick(v, 0)
                    }
                }
                ui.histogram = ui.picked.is_some() && !ui.histogram;
            }
            _ => {}
        }
    }
}

fn lines(ls: Vec<String>) -> Vec<Line<'static>> {
    ls.into_iter().map(Line::from).collect()
}

fn draw(f: &mut Frame, view: Option<&View>, ui: &Ui, error: Option<&str>) {
    let area = f.area();
    let Some(v) = view else {
        let msg = error.unwrap_or("asking the manager...");
        f.render_widget(Paragraph::new(format!("lego top: {msg}")), area);
        return;
    };
    let comp_h = (v.comps.len() as u16 + 1).min(7) + 2;
    let bottom_h = if ui.histogram { 12 } else { 6 };
    let [head, comps, jobs, bottom, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(comp_h),
        Constraint::Min(4),
        Constraint::Length(bottom_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let mut title = v.header.clone();
    if let Some(e) = error {
        title = format!("{title} | last refresh failed: {e}");
    }
    f.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::BOLD)),
        head,
    );
    f.render_widget(
        Paragraph::new(lines(text::components(v))).block(Block::bordered().title(" components ")),
        comps,
    );
    draw_jobs(f, v, ui, jobs);
    match ui.histogram {
        true => draw_histogram(f, v, ui, bottom),
        false => draw_journal(f, v, bottom),
    }
    f.render_widget(
        Paragraph::new(format!(
            " q quit  s sort (by {})  up/down pick a job  enter fault-latency histogram",
            ui.sort.name()
        ))
        .style(Style::default().add_modifier(Modifier::REVERSED)),
        help,
    );
}

fn draw_jobs(f: &mut Frame, v: &View, ui: &Ui, area: Rect) {
    let rows = text::jobs(v);
    let mut out: Vec<Line> = Vec::with_capacity(rows.len());
    for (i, l) in rows.into_iter().enumerate() {
        let picked = i > 0 && ui.picked == Some(v.jobs[i - 1].id);
        out.push(match picked {
            true => Line::from(l).style(Style::default().add_modifier(Modifier::REVERSED)),
            false => Line::from(l),
        });
    }
    // Keep the picked row in sight.
    let inner = area.height.saturating_sub(3) as usize;
    let at = ui
        .picked
        .and_then(|id| v.jobs.iter().position(|j| j.id == id))
        .unwrap_or(0);
    let skip = at.saturating_sub(inner.saturating_sub(1));
    let mut shown = vec![out[0].clone()];
    shown.extend(out.into_iter().skip(1 + skip));
    let title = format!(
        " jobs: {} running, sorted by {} ",
        v.jobs.len(),
        ui.sort.name()
    );
    f.render_widget(
        Paragraph::new(shown).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_journal(f: &mut Frame, v: &View, area: Rect) {
    let mut ls: Vec<String> = vec![format!("vNodes: {}", v.vnodes.join(", "))];
    ls.extend(match v.troubles.is_empty() {
        true => vec!["vRegions: all healthy, none moving".to_string()],
        false => v.troubles.iter().take(2).cloned().collect(),
    });
    ls.extend(v.errors.iter().cloned());
    // The newest journal lines fill what is left of the box.
    let keep = area.height.saturating_sub(2) as usize;
    let room = keep.saturating_sub(ls.len()).max(1);
    match v.journal.is_empty() {
        true => ls.push("journal: nothing has failed".to_string()),
        false => ls.extend(
            v.journal
                .iter()
                .skip(v.journal.len().saturating_sub(room))
                .cloned(),
        ),
    }
    f.render_widget(
        Paragraph::new(lines(ls)).block(Block::bordered().title(" vNodes, vRegions and journal ")),
        area,
    );
}

fn draw_histogram(f: &mut Frame, v: &View, ui: &Ui, area: Rect) {
    let Some(j) = v.jobs.iter().find(|j| Some(j.id) == ui.picked) else {
        return;
    };
    let mut o = octaves(&j.hist);
    // Too many octaves for the box: the slowest share one line.
    let keep = area.height.saturating_sub(2) as usize;
    if o.len() > keep && keep > 1 {
        let tail: u64 = o[keep - 1..].iter().map(|(_, _, n)| n).sum();
        let (lo, hi) = (o[keep - 1].0, o[o.len() - 1].1);
        o.truncate(keep - 1);
        o.push((lo, hi, tail));
    }
    let total: u64 = o.iter().map(|(_, _, n)| n).sum();
    let most = o.iter().map(|(_, _, n)| *n).max().unwrap_or(0).max(1);
    let width = area.width.saturating_sub(30) as u64;
    let mut ls: Vec<String> = o
        .iter()
        .map(|(lo, hi, n)| {
            format!(
                "{:>7}-{:<8} {:>8} {}",
                us(*lo),
                us(*hi),
                n,
                "#".repeat((n.saturating_mul(width)).div_ceil(most) as usize)
            )
        })
        .collect();
    if ls.is_empty() {
        ls.push("no remote fault yet".into());
    }
    let title = format!(
        " fault latency of job {} (vNode {}): {} remote faults ",
        text::short_id(j.id),
        j.vnode,
        total
    );
    f.render_widget(
        Paragraph::new(lines(ls)).block(Block::bordered().title(title)),
        area,
    );
}

/// Microseconds as a short duration: 16us, 2ms, 1s.
fn us(v: u64) -> String {
    match v {
        0..=999 => format!("{v}us"),
        1000..=999_999 => format!("{}ms", v / 1000),
        _ => format!("{}s", v / 1_000_000),
    }
}
