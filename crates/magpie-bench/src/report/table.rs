//! Fixed-width summary tables on stdout, one printer per scenario.

use std::fmt::Write as _;

use crate::metrics::{Percentiles, ProcReport, ServiceReport, fmt_bytes, fmt_us};
use crate::scenarios::ClusterLayout;
use crate::scenarios::c2c::{C2cRun, C2cSuite, LoadMode};
use crate::scenarios::catchup::CatchupReport;
use crate::scenarios::group::{GroupRun, GroupSuite};
use crate::scenarios::idle::IdleReport;
use crate::scenarios::login::LoginReport;

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns, the first column left-aligned and the
    /// others right-aligned.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map(String::as_str).unwrap_or("");
                if c == 0 {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "  {cell:>width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn pct(p: &Percentiles) -> [String; 5] {
    [
        fmt_us(p.p50_us),
        fmt_us(p.p90_us),
        fmt_us(p.p99_us),
        fmt_us(p.p999_us),
        fmt_us(p.max_us),
    ]
}

fn proc_cells(p: Option<&ProcReport>) -> [String; 2] {
    match p {
        Some(p) => [
            format!("{:.0}%", p.cpu_pct_mean),
            fmt_bytes(p.rss_max_bytes as f64),
        ],
        None => ["-".into(), "-".into()],
    }
}

/// The last cells of a load row: `lost/dup/reord`, errors, server cpu and rss, generator cpu.
fn outcome_cells(
    [lost, duplicated, reordered]: [u64; 3],
    errors: u64,
    server: Option<&ProcReport>,
    generator: Option<&ProcReport>,
) -> [String; 5] {
    let [cpu, rss] = proc_cells(server);
    let [gcpu, _] = proc_cells(generator);
    [
        format!("{lost}/{duplicated}/{reordered}"),
        errors.to_string(),
        cpu,
        rss,
        gcpu,
    ]
}

fn c2c_row(name: &str, run: &C2cRun) -> Vec<String> {
    let c = &run.correctness;
    let mut row = vec![
        name.to_owned(),
        run.load.describe(),
        rate(run.sent_per_sec),
        rate(run.acked_per_sec),
        rate(run.delivered_per_sec),
    ];
    row.extend(pct(&run.latency));
    row.extend(outcome_cells(
        [c.lost, c.duplicated, c.reordered],
        run.totals.send_errors,
        run.server.as_ref(),
        run.generator.as_ref(),
    ));
    row
}

const C2C_HEADERS: [&str; 15] = [
    "target",
    "load",
    "sent/s",
    "acked/s",
    "deliv/s",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "lost/dup/reord",
    "errors",
    "srv cpu",
    "srv rss",
    "gen cpu",
];

/// `cluster: 3 nodes (34/33/33 clients), …` — nothing for a single server.
fn cluster_lines(out: &mut String, layout: Option<&ClusterLayout>) {
    let Some(layout) = layout else { return };
    let per_node: Vec<String> = layout
        .clients_per_node
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = write!(
        out,
        "cluster: {} nodes, clients per node {}",
        layout.nodes,
        per_node.join("/")
    );
    if let Some(same) = layout.same_node_pairs {
        let _ = write!(out, "; sender and recipient on the same node: {same} pairs");
    }
    out.push_str(
        "; server cpu/rss = all nodes summed
",
    );
}

/// A blank line, the cluster's layout, and its backing services (of the Magpie base run).
fn cluster_block(out: &mut String, layout: &ClusterLayout, services: &[ServiceReport]) {
    out.push('\n');
    cluster_lines(out, Some(layout));
    if let Some(line) = service_line("backing services (magpie)", services) {
        out.push_str(&line);
    }
}

/// `ack latency (send -> ack) magpie: p50 … p99 … max …`
fn ack_latency_line(p: &Percentiles) -> String {
    format!(
        "ack latency (send -> ack) magpie: p50 {} p99 {} max {}",
        fmt_us(p.p50_us),
        fmt_us(p.p99_us),
        fmt_us(p.max_us)
    )
}

/// ` (from the scheduled send time)` after the latency's definition, for an open loop.
fn latency_origin(load: LoadMode) -> &'static str {
    if matches!(load, LoadMode::Open { .. }) {
        " (from the scheduled send time)"
    } else {
        ""
    }
}

/// `magpie 50%`: a sweep step's name.
fn step_name(name: &str, fraction: f64) -> String {
    format!("{name} {:.0}%", fraction * 100.0)
}

/// The sweep steps of both targets, by offered rate.
fn by_offered<'a, P>(
    relay: &'a [P],
    magpie: &'a [P],
    offered: impl Fn(&P) -> f64,
) -> Vec<(&'static str, &'a P)> {
    let mut rows: Vec<(&str, &P)> = relay
        .iter()
        .map(|p| ("relay", p))
        .chain(magpie.iter().map(|p| ("magpie", p)))
        .collect();
    rows.sort_by(|a, b| offered(a.1).total_cmp(&offered(b.1)));
    rows
}

/// The relay (if any) and Magpie base runs, named.
fn base_runs<'a, R>(relay: Option<&'a R>, magpie: &'a R) -> impl Iterator<Item = (String, &'a R)> {
    relay
        .map(|r| ("relay".to_owned(), r))
        .into_iter()
        .chain(std::iter::once(("magpie".to_owned(), magpie)))
}

/// `postgres cpu 85% rss …; nats cpu 12% …` — nothing when there are no services.
fn service_line(name: &str, services: &[ServiceReport]) -> Option<String> {
    if services.is_empty() {
        return None;
    }
    let cells: Vec<String> = services
        .iter()
        .map(|s| {
            let [cpu, rss] = proc_cells(Some(&s.proc));
            format!("{} cpu {cpu} rss {rss}", s.name)
        })
        .collect();
    Some(format!(
        "{name}: {}
",
        cells.join("; ")
    ))
}

/// The c2c summary: relay, Magpie, the ratio, and any sweep.
pub fn c2c(suite: &C2cSuite) -> String {
    let m = &suite.magpie;
    let mut out = format!(
        "c2c: {} users, {} B text, {:.1} s measured after {:.1} s warmup; latency = send -> recipient receive{}\n\n",
        m.users,
        m.size,
        m.duration_s,
        m.warmup_s,
        latency_origin(m.load)
    );
    let mut table = Table::new(&C2C_HEADERS);
    for (name, run) in base_runs(suite.relay.as_ref(), m) {
        table.row(c2c_row(&name, run));
    }
    out.push_str(&table.render());
    if let Some(layout) = &m.cluster {
        cluster_block(&mut out, layout, &m.services);
    }
    if let Some(ratio) = suite.ratio_to_relay {
        let _ = writeln!(
            out,
            "\nmagpie / relay delivered throughput: {ratio:.3} (budget >= 0.5)"
        );
    }
    let _ = writeln!(out, "{}", ack_latency_line(&m.ack_latency));
    if !suite.sweep_magpie.is_empty() {
        out.push_str("\nopen-loop sweep (latency from the scheduled send time):\n");
        let mut table = Table::new(&C2C_HEADERS);
        let rows = by_offered(&suite.sweep_relay, &suite.sweep_magpie, |p| {
            p.offered_per_sec
        });
        for (name, point) in rows {
            table.row(c2c_row(&step_name(name, point.fraction), &point.run));
        }
        out.push_str(&table.render());
        for point in &suite.sweep_magpie {
            if let Some(line) = service_line(
                &format!("backing services ({})", step_name("magpie", point.fraction)),
                &point.run.services,
            ) {
                out.push_str(&line);
            }
        }
    }
    let runs = base_runs(suite.relay.as_ref(), m)
        .chain(
            suite
                .sweep_relay
                .iter()
                .map(|p| (step_name("relay", p.fraction), &p.run)),
        )
        .chain(
            suite
                .sweep_magpie
                .iter()
                .map(|p| (step_name("magpie", p.fraction), &p.run)),
        );
    let mut out_of_order = None;
    for (name, run) in runs {
        if let Some(n) = run.correctness.arrived_out_of_order {
            *out_of_order.get_or_insert(0) += n;
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}: {n} deliveries arrived after a newer message of the same conversation (cluster: not a failure, clients order by seq)"
                );
            }
        }
        if let Some(e) = &run.correctness.first_error {
            let _ = writeln!(out, "{name}: first error answer: {e}");
        }
        let c = &run.correctness;
        if !c.ok() || c.unanswered > 0 {
            let _ = writeln!(
                out,
                "{name}: CORRECTNESS lost {} duplicated {} reordered {} (delivered seq going backwards {}; seqs assigned out of send order {}) seq-mismatch {} misdelivered {} undecodable {} unanswered {} closed-by-server {} (first close code {:?}){}",
                c.lost,
                c.duplicated,
                c.reordered,
                c.delivered_seq_backwards,
                c.seqs_out_of_send_order,
                c.seq_mismatch,
                c.misdelivered,
                c.undecodable,
                c.unanswered,
                c.closed_by_server,
                c.first_close_code,
                c.seq_collisions
                    .map_or_else(String::new, |n| format!(" seq-collisions {n}"))
            );
        }
    }
    let verdict = match (suite.passed(), out_of_order) {
        (false, _) => "FAILED".to_owned(),
        (true, None) => "every acked message delivered exactly once, in order".to_owned(),
        (true, Some(n)) => format!(
            "every acked message delivered exactly once with its acked seq, no seq twice per conversation ({n} arrivals out of order across nodes)"
        ),
    };
    let _ = writeln!(out, "\ncorrectness: {verdict}");
    out
}

fn group_row(name: &str, run: &GroupRun) -> Vec<String> {
    let c = &run.correctness;
    let mut row = vec![
        name.to_owned(),
        run.load.describe(),
        rate(run.acked_per_sec),
        rate(run.delivered_per_sec),
    ];
    row.extend(pct(&run.latency));
    row.push(fmt_us(run.reached_all_latency.p99_us));
    row.extend(outcome_cells(
        [c.lost, c.duplicated, c.reordered],
        run.totals.send_errors,
        run.server.as_ref(),
        run.generator.as_ref(),
    ));
    row
}

const GROUP_HEADERS: [&str; 15] = [
    "target",
    "load",
    "msg/s",
    "deliv/s",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "all p99",
    "lost/dup/reord",
    "errors",
    "srv cpu",
    "srv rss",
    "gen cpu",
];

/// The group summary: relay, Magpie, the ratio, any sweep, and the budget.
pub fn group(suite: &GroupSuite) -> String {
    let m = &suite.magpie;
    let length = match m.messages {
        Some(n) => format!(
            "{n} messages, {:.1} s from first send to last delivery",
            m.duration_s
        ),
        None => format!(
            "{:.1} s measured after {:.1} s warmup",
            m.duration_s, m.warmup_s
        ),
    };
    let mut out = format!(
        "group: {} members online (one group, {} recipients per message), {} sending, {} B text, {length}\n\
         latency = send -> each recipient's receive{}; all p99 = send -> last recipient, per message; msg/s = acked\n\n",
        m.members,
        m.recipients(),
        m.senders,
        m.size,
        latency_origin(m.load)
    );
    let mut table = Table::new(&GROUP_HEADERS);
    for (name, run) in base_runs(suite.relay.as_ref(), m) {
        table.row(group_row(&name, run));
    }
    let sweep = by_offered(&suite.sweep_relay, &suite.sweep_magpie, |p| {
        p.offered_per_sec
    });
    for (name, point) in &sweep {
        table.row(group_row(&step_name(name, point.fraction), &point.run));
    }
    out.push_str(&table.render());
    if let Some(layout) = &m.cluster {
        cluster_block(&mut out, layout, &m.services);
    }
    let _ = writeln!(out, "\n{}", ack_latency_line(&m.ack_latency));
    let runs = base_runs(suite.relay.as_ref(), m).chain(
        sweep
            .iter()
            .map(|(name, p)| (step_name(name, p.fraction), &p.run)),
    );
    for (name, run) in runs {
        let c = &run.correctness;
        let _ = writeln!(
            out,
            "{name}: sent {} acked {} delivered {} of {} expected; notices {}",
            run.totals.sent,
            run.totals.acked,
            run.totals.delivered,
            run.totals.acked * run.recipients() as u64,
            run.totals.notices
        );
        if let Some(e) = &c.first_error {
            let _ = writeln!(out, "{name}: first error answer: {e}");
        }
        if let Some(n) = c.arrived_out_of_order.filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "{name}: {n} deliveries arrived after a newer message of the same sender, {} out of group order (cluster: not a failure, clients order by seq)",
                c.out_of_group_order
            );
        }
        if !c.ok() || c.unanswered > 0 {
            let _ = writeln!(
                out,
                "{name}: CORRECTNESS lost {} (messages not reaching everyone {}) duplicated {} reordered {} (seq going backwards {}) out-of-group-order {} seqs out of send order {} seq-mismatch {} seq-collisions {} seq-gaps {} misdelivered {} undecodable {} unanswered {} closed-by-server {} (first close code {:?})",
                c.lost,
                c.messages_not_reaching_all,
                c.duplicated,
                c.reordered,
                c.delivered_seq_backwards,
                c.out_of_group_order,
                c.seqs_out_of_send_order,
                c.seq_mismatch,
                c.seq_collisions,
                c.seq_gaps,
                c.misdelivered,
                c.undecodable,
                c.unanswered,
                c.closed_by_server,
                c.first_close_code,
            );
        }
    }
    if let Some(ratio) = suite.ratio_to_relay {
        let _ = writeln!(out, "\nmagpie / relay deliveries/s: {ratio:.3}");
    }
    out.push_str("\nbudget:\n");
    for line in &suite.budget {
        let verdict = match line.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "  {}: {} [{}] -> {verdict}",
            line.budget, line.measured, line.run
        );
    }
    let verdict = if suite.passed() {
        "every acked message delivered exactly once to every other member, in send order"
    } else {
        "FAILED"
    };
    let _ = writeln!(out, "\ncorrectness: {verdict}");
    out
}

/// The idle summary.
pub fn idle(r: &IdleReport) -> String {
    let mut out = format!(
        "idle: {} connections requested, {} users\n\n",
        r.requested, r.users
    );
    let mut table = Table::new(&["connections", "server rss", "generator rss"]);
    for p in &r.series {
        table.row(vec![
            p.connections.to_string(),
            fmt_bytes(p.server_rss_bytes as f64),
            fmt_bytes(p.generator_rss_bytes as f64),
        ]);
    }
    out.push_str(&table.render());
    let _ = writeln!(
        out,
        "\nestablished {} failed {} closed while held {} verified alive {}",
        r.established,
        r.failed,
        r.closed_while_held,
        r.verified_alive
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    );
    let _ = writeln!(
        out,
        "connect + login: {:.1} s ({:.0}/s); listen-queue overflows {}",
        r.connect_seconds,
        r.connects_per_sec,
        r.listen_overflows
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    );
    match r.rss_per_connection_bytes {
        Some(b) => {
            let _ = writeln!(
                out,
                "server RSS per connection: {} ({:.0} B; budget <= 8 KiB)",
                fmt_bytes(b),
                b
            );
        }
        None => out.push_str("server RSS per connection: - (no server pid)\n"),
    }
    let _ = writeln!(
        out,
        "generator RSS per connection: {}",
        fmt_bytes(r.generator_rss_per_connection_bytes)
    );
    if let Some(e) = &r.first_failure {
        let _ = writeln!(out, "first failure: {e}");
    }
    let _ = writeln!(
        out,
        "\ncorrectness: {}",
        if r.passed() {
            "every connection logged in, stayed up and answered"
        } else {
            "FAILED"
        }
    );
    out
}

/// The login-storm summary.
pub fn login(r: &LoginReport) -> String {
    let mut out = format!("login: {} devices of {} users\n", r.devices, r.users);
    if let Some(seed) = &r.seed {
        let _ = writeln!(
            out,
            "seeded {} messages in {:.1} s ({:.0}/s) before the storm",
            seed.messages, seed.seconds, seed.per_sec
        );
    }
    out.push('\n');
    let mut table = Table::new(&[
        "", "per sec", "all done", "p50", "p90", "p99", "p99.9", "max",
    ]);
    let [p50, p90, p99, p999, max] = pct(&r.login_latency);
    table.row(vec![
        "login".into(),
        rate(r.logins_per_sec),
        format!("{:.2}s", r.time_to_all_logged_in_s),
        p50,
        p90,
        p99,
        p999,
        max,
    ]);
    let [p50, p90, p99, p999, max] = pct(&r.synced_latency);
    table.row(vec![
        "login+sync".into(),
        rate(r.synced_logins_per_sec),
        format!("{:.2}s", r.time_to_all_synced_s),
        p50,
        p90,
        p99,
        p999,
        max,
    ]);
    out.push_str(&table.render());
    let [cpu, rss] = proc_cells(r.server.as_ref());
    let [gcpu, _] = proc_cells(r.generator.as_ref());
    let _ = writeln!(
        out,
        "\nsynced {} conversations / {} messages; server cpu {cpu} rss {rss}; generator cpu {gcpu}",
        r.conversations_synced, r.messages_synced
    );
    cluster_lines(&mut out, r.cluster.as_ref());
    if let Some(line) = service_line("backing services", &r.services) {
        out.push_str(&line);
    }
    let _ = writeln!(
        out,
        "login+sync rate budget >= 5000/s; failed {} wrong sync {}; listen-queue overflows {}",
        r.failed,
        r.wrong_sync,
        r.listen_overflows
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    );
    if let Some(e) = &r.first_failure {
        let _ = writeln!(out, "first failure: {e}");
    }
    let _ = writeln!(
        out,
        "\ncorrectness: {}",
        if r.passed() {
            "every device logged in and synced exactly what was seeded"
        } else {
            "FAILED"
        }
    );
    out
}

/// The catch-up summary.
pub fn catchup(r: &CatchupReport) -> String {
    let mut out = format!(
        "catchup: {} conversations x {} new messages on a fresh SDK device\nseeded {} messages in {:.1} s ({:.0}/s)\n\n",
        r.convs, r.msgs, r.seed.messages, r.seed.seconds, r.seed.per_sec
    );
    let mut table = Table::new(&[
        "device",
        "login",
        "synced",
        "received",
        "cached convs",
        "cached msgs",
        "ok",
    ]);
    for (i, d) in r.devices.iter().enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            format!("{:.3}s", d.login_s),
            format!("{:.3}s", d.synced_s),
            d.messages_received.to_string(),
            d.conversations_cached.to_string(),
            d.messages_cached.to_string(),
            if d.correct { "yes" } else { "NO" }.into(),
        ]);
    }
    out.push_str(&table.render());
    let _ = writeln!(
        out,
        "\nmedian time to synced {:.3} s ({:.0} msg/s; budget <= 3 s for 1000 x 100)",
        r.median_synced_s, r.messages_per_sec
    );
    let _ = writeln!(
        out,
        "\ncorrectness: {}",
        if r.passed() {
            "the cache holds every seeded message, each emitted once"
        } else {
            "FAILED"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["long".into(), "1".into()]);
        assert_eq!(t.render(), "a     bb\nlong   1\n");
    }
}
