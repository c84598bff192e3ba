//! `dangan sim placement`: placement at a province's size, simulated with the real
//! [`Layout::place`] over many stripe keys (no I/O, no cluster).
//!
//! It builds a layout of `peers` nodes in `zones` zones (equal zone sizes, or a province's
//! skew: the biggest city several times the smallest), places `stripes` stripes, and
//! reports:
//!
//! - **load**: each peer's shard slots against its weight's share of all slots; the largest
//!   deviation, its 99th percentile, and the deviation pure chance gives at this many
//!   stripes (a peer's count is binomial: its relative standard deviation is
//!   `1 / sqrt(expected)`), so a skew of the algorithm shows above the noise;
//! - **moves** for three layout changes (a peer joins, a peer drains, a whole zone joins):
//!   slots whose node changed, against the minimum (the slots the joining nodes take, or
//!   the drained node held).
//!
//! Deterministic: node keys and stripe keys come from seeds. Not for: what moving costs in
//! time (`dangan bench ops` measures a real rebalance).

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::identity::{Identity, Role};
use crate::placement::{Layout, NodeInfo, PlacementError};

/// How zone sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSizes {
    /// Every zone has `peers / zones` nodes (the remainder one each in the first zones).
    Equal,
    /// Sizes fall off linearly from the first zone to the last, the first four times the
    /// last, as the prefecture-level cities of a province differ.
    Skewed,
}

/// How node weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Every node weight 1.
    Equal,
    /// Weights 1, 2 and 4 in turn (three generations of disks).
    Mixed,
}

/// What `dangan sim placement` simulates.
#[derive(Debug, Clone)]
pub struct PlacementSimOptions {
    pub peers: usize,
    pub zones: usize,
    pub stripes: u64,
    /// Shards per stripe (k + m).
    pub width: usize,
    pub zone_sizes: ZoneSizes,
    pub weights: Weights,
}

impl Default for PlacementSimOptions {
    fn default() -> Self {
        Self {
            peers: 1000,
            zones: 16,
            stripes: 200_000,
            width: 6,
            zone_sizes: ZoneSizes::Equal,
            weights: Weights::Equal,
        }
    }
}

/// How far peers' loads are from their weights' shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadSpread {
    /// Largest |load / share − 1| over all peers.
    pub max: f64,
    /// Its 99th percentile.
    pub p99: f64,
    /// Largest and smallest load / share.
    pub highest: f64,
    pub lowest: f64,
    /// `1 / sqrt(expected slots)` of the least-weighted peer: chance's own deviation (one
    /// standard deviation) at this many stripes.
    pub noise: f64,
}

/// One layout change's moves.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveFigure {
    pub moved: u64,
    pub minimum: u64,
}

impl MoveFigure {
    /// `moved / minimum`.
    pub fn ratio(&self) -> f64 {
        self.moved as f64 / self.minimum.max(1) as f64
    }
}

/// What the simulation found.
#[derive(Debug, Clone)]
pub struct PlacementSimReport {
    pub options: PlacementSimOptions,
    pub zone_sizes: Vec<usize>,
    pub load: LoadSpread,
    /// The same spread with every node's load summed per zone, against the zone's share.
    pub zone_load: LoadSpread,
    pub join: MoveFigure,
    pub drain: MoveFigure,
    pub zone_join: MoveFigure,
    /// Placements per second on this machine (all cores).
    pub placements_per_s: f64,
    pub elapsed: Duration,
}

impl PlacementSimReport {
    /// The table `dangan sim placement` prints (and the README shows).
    pub fn table(&self) -> String {
        let o = &self.options;
        let pct = |v: f64| format!("{:.1} %", v * 100.0);
        let mut out = format!(
            "placement of {} stripes of {} shards on {} peers in {} zones ({:?} zones of {}..{} peers, {:?} weights)\n",
            o.stripes,
            o.width,
            o.peers,
            o.zones,
            o.zone_sizes,
            self.zone_sizes.iter().min().copied().unwrap_or(0),
            self.zone_sizes.iter().max().copied().unwrap_or(0),
            o.weights,
        );
        out.push_str("| figure | result |\n|---|---|\n");
        out.push_str(&format!(
            "| load per peer / its weight's share: max deviation (p99) | {} ({}); lowest {:.3}, highest {:.3}; chance alone: ±{} (1 σ) |\n",
            pct(self.load.max),
            pct(self.load.p99),
            self.load.lowest,
            self.load.highest,
            pct(self.load.noise),
        ));
        out.push_str(&format!(
            "| load per zone / its weight's share: max deviation | {}; lowest {:.3}, highest {:.3} |\n",
            pct(self.zone_load.max),
            self.zone_load.lowest,
            self.zone_load.highest,
        ));
        for (what, m) in [
            ("one peer joins", self.join),
            ("one peer drains", self.drain),
            ("a whole zone joins", self.zone_join),
        ] {
            out.push_str(&format!(
                "| shards moved when {what} / minimum | {:.3} ({} / {}) |\n",
                m.ratio(),
                m.moved,
                m.minimum
            ));
        }
        out.push_str(&format!(
            "| placements per second (all cores) / whole run | {:.0} / {:.1} s |\n",
            self.placements_per_s,
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

/// Node `i`'s key: deterministic, so every run places the same way.
fn node(i: usize, zone: String, weight: u32) -> NodeInfo {
    let seed = *blake3::hash(format!("sim placement node {i}").as_bytes()).as_bytes();
    NodeInfo {
        key: Identity::from_seed(seed, Role::Node).public(),
        zone,
        weight,
        addr: format!("sim-{i}"),
    }
}

fn weight(i: usize, weights: Weights) -> u32 {
    match weights {
        Weights::Equal => 1,
        Weights::Mixed => [1, 2, 4][i % 3],
    }
}

/// Zone sizes summing to `peers`.
fn sizes(peers: usize, zones: usize, how: ZoneSizes) -> Vec<usize> {
    let raw: Vec<f64> = match how {
        ZoneSizes::Equal => vec![1.0; zones],
        // Linear from 4 down to 1.
        ZoneSizes::Skewed => (0..zones)
            .map(|z| 4.0 - 3.0 * z as f64 / (zones.max(2) - 1) as f64)
            .collect(),
    };
    let total: f64 = raw.iter().sum();
    let mut out: Vec<usize> = raw
        .iter()
        .map(|r| ((r / total * peers as f64).floor() as usize).max(1))
        .collect();
    let mut i = 0;
    while out.iter().sum::<usize>() < peers {
        out[i % zones] += 1;
        i += 1;
    }
    while out.iter().sum::<usize>() > peers {
        let z = out
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map(|(z, _)| z)
            .unwrap_or(0);
        out[z] -= 1;
    }
    out
}

fn stripe_key(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

/// Every stripe's nodes (indices into `layout.nodes`), in shard order, on all cores.
fn place_all(layout: &Layout, stripes: u64, width: usize) -> Result<Vec<u32>, PlacementError> {
    let index: std::collections::HashMap<_, u32> = layout
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.key, i as u32))
        .collect();
    let placer = layout.placer();
    const CHUNK: u64 = 1024;
    let chunks: Vec<Result<Vec<u32>, PlacementError>> = (0..stripes.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let ids = c * CHUNK..((c + 1) * CHUNK).min(stripes);
            let mut out = Vec::with_capacity(CHUNK as usize * width);
            for i in ids {
                for n in placer.place(&stripe_key(i), width)? {
                    out.push(index[&n.key]);
                }
            }
            Ok(out)
        })
        .collect();
    let mut all = Vec::with_capacity(stripes as usize * width);
    for c in chunks {
        all.extend(c?);
    }
    Ok(all)
}

fn counts(placed: &[u32], nodes: usize) -> Vec<u64> {
    let mut out = vec![0u64; nodes];
    for &n in placed {
        out[n as usize] += 1;
    }
    out
}

/// Spread of `loads` against shares proportional to `weights` (entries of weight 0 left out).
fn spread(loads: &[u64], weights: &[f64]) -> LoadSpread {
    let total_load: u64 = loads.iter().sum();
    let total_weight: f64 = weights.iter().sum();
    let mut devs = Vec::new();
    let (mut highest, mut lowest) = (f64::MIN, f64::MAX);
    let mut least_expected = f64::MAX;
    for (load, w) in loads.iter().zip(weights) {
        if *w <= 0.0 {
            continue;
        }
        let expected = total_load as f64 * w / total_weight;
        let r = *load as f64 / expected;
        highest = highest.max(r);
        lowest = lowest.min(r);
        least_expected = least_expected.min(expected);
        devs.push((r - 1.0).abs());
    }
    devs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        devs.get(((devs.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    LoadSpread {
        max: devs.last().copied().unwrap_or(0.0),
        p99: at(0.99),
        highest,
        lowest,
        noise: 1.0 / least_expected.max(1.0).sqrt(),
    }
}

fn moved(before: &[u32], after: &[u32]) -> u64 {
    before.iter().zip(after).filter(|(a, b)| a != b).count() as u64
}

/// Runs the simulation (CPU only; all cores through rayon).
pub fn placement(options: PlacementSimOptions) -> Result<PlacementSimReport, PlacementError> {
    let start = Instant::now();
    let o = &options;
    if o.zones == 0 || o.peers < o.zones {
        return Err(PlacementError::NotEnoughNodes {
            needed: o.zones.max(1),
            available: o.peers,
        });
    }
    let zone_sizes = sizes(o.peers, o.zones, o.zone_sizes);
    let mut nodes = Vec::with_capacity(o.peers);
    for (z, size) in zone_sizes.iter().enumerate() {
        for _ in 0..*size {
            let i = nodes.len();
            nodes.push(node(i, format!("city-{z:02}"), weight(i, o.weights)));
        }
    }
    let base = Layout::new(1, nodes)?;
    let placing = Instant::now();
    let before = place_all(&base, o.stripes, o.width)?;
    let placements_per_s = o.stripes as f64 / placing.elapsed().as_secs_f64().max(1e-9);

    let weights: Vec<f64> = base.nodes.iter().map(|n| f64::from(n.weight)).collect();
    let loads = counts(&before, base.nodes.len());
    let load = spread(&loads, &weights);
    let mut zone_loads = vec![0u64; o.zones];
    let mut zone_weights = vec![0f64; o.zones];
    let mut at = 0;
    for (z, size) in zone_sizes.iter().enumerate() {
        zone_loads[z] = loads[at..at + size].iter().sum();
        zone_weights[z] = weights[at..at + size].iter().sum();
        at += size;
    }
    let zone_load = spread(&zone_loads, &zone_weights);

    // One peer joins the first zone (the biggest when skewed), with that zone's usual weight.
    let n = base.nodes.len();
    let mut joined = base.clone();
    joined.epoch += 1;
    joined
        .nodes
        .push(node(n, "city-00".into(), weight(n, o.weights)));
    let after = place_all(&joined, o.stripes, o.width)?;
    let join = MoveFigure {
        moved: moved(&before, &after),
        minimum: counts(&after, n + 1)[n],
    };

    // A peer of the middle zone drains (weight 0).
    let victim = zone_sizes[..o.zones / 2].iter().sum::<usize>();
    let mut drained = base.clone();
    drained.epoch += 1;
    drained.nodes[victim].weight = 0;
    let after = place_all(&drained, o.stripes, o.width)?;
    let drain = MoveFigure {
        moved: moved(&before, &after),
        minimum: loads[victim],
    };

    // A whole new zone of the mean zone size joins.
    let size = (o.peers / o.zones).max(1);
    let mut grown = base.clone();
    grown.epoch += 1;
    for j in 0..size {
        grown
            .nodes
            .push(node(n + j, "city-new".into(), weight(n + j, o.weights)));
    }
    let after = place_all(&grown, o.stripes, o.width)?;
    let new_counts = counts(&after, n + size);
    let zone_join = MoveFigure {
        moved: moved(&before, &after),
        minimum: new_counts[n..].iter().sum(),
    };

    Ok(PlacementSimReport {
        options,
        zone_sizes,
        load,
        zone_load,
        join,
        drain,
        zone_join,
        placements_per_s,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_sizes_sum_to_the_peers_and_skew_as_asked() {
        let equal = sizes(1000, 16, ZoneSizes::Equal);
        assert_eq!(equal.iter().sum::<usize>(), 1000);
        assert!(equal.iter().max().unwrap() - equal.iter().min().unwrap() <= 1);
        let skewed = sizes(1000, 16, ZoneSizes::Skewed);
        assert_eq!(skewed.iter().sum::<usize>(), 1000);
        assert!(skewed[0] >= 3 * skewed[15], "{skewed:?}");
        assert_eq!(sizes(7, 7, ZoneSizes::Skewed), vec![1; 7]);
    }

    #[test]
    fn spread_measures_against_weights() {
        // Loads exactly proportional to weights: no deviation.
        let s = spread(&[10, 20, 40], &[1.0, 2.0, 4.0]);
        assert!(s.max < 1e-12 && (s.highest - 1.0).abs() < 1e-12);
        // One peer 10 % over, one 10 % under.
        let s = spread(&[110, 90, 200], &[1.0, 1.0, 2.0]);
        assert!((s.max - 0.1).abs() < 1e-9, "{s:?}");
        assert!((s.lowest - 0.9).abs() < 1e-9 && (s.highest - 1.1).abs() < 1e-9);
        // A drained peer (weight 0) is left out.
        assert!(spread(&[0, 50, 50], &[0.0, 1.0, 1.0]).max < 1e-12);
    }

    /// A small run: every figure is computed from real placements, joins and drains move at
    /// least their minimum, and the run is deterministic.
    #[test]
    fn a_small_simulation_moves_at_least_the_minimum_and_repeats_itself() {
        let options = PlacementSimOptions {
            peers: 40,
            zones: 4,
            stripes: 4000,
            width: 6,
            zone_sizes: ZoneSizes::Skewed,
            weights: Weights::Mixed,
        };
        let a = placement(options.clone()).unwrap();
        for m in [a.join, a.drain, a.zone_join] {
            assert!(m.minimum > 0 && m.moved >= m.minimum, "{m:?}");
        }
        assert!(a.load.max > 0.0 && a.load.noise > 0.0);
        let b = placement(options).unwrap();
        assert_eq!(a.join.moved, b.join.moved);
        assert_eq!(a.load.max, b.load.max);
        assert!(a.table().contains("one peer drains"));
    }
}
