//! Decode-step state of the CUDA backend: which steps are deferred and replayed as CUDA graphs,
//! and the staging of their token ids and rows (kept on the device, re-uploaded only when they
//! change).

use super::{i32_of, Scratch};
use crate::backend::RowPos;
use bitnet_core::{Error, Result};
use bitnet_cuda::cudarc::driver::CudaSlice;
use bitnet_cuda::ops::{self, IdsArg, RowsArg};
use bitnet_cuda::Gpu;

/// Decode-step graphs: steps of the same row count (at most [`STEP_ROWS`]) after the first two
/// are deferred and replayed as a CUDA graph; token ids and rows are read from `ids`/`rows` on
/// the device.
pub(super) struct Step {
    pub(super) enabled: bool,
    /// Row count of the last step, and how many consecutive steps had it.
    pub(super) last_n: usize,
    pub(super) repeats: usize,
    /// True while the current step is deferred; its token ids, and its (slot, pos) pairs once
    /// `rows_known` (host buffers reused every step: decoding allocates nothing per token).
    pub(super) active: bool,
    pub(super) cur_ids: Vec<i32>,
    pub(super) cur_rows: Vec<i32>,
    pub(super) rows_known: bool,
    pub(super) ids: Option<CudaSlice<i32>>,
    pub(super) rows: Option<CudaSlice<i32>>,
    /// The next `embed` takes its id from `ids`, where `sample_ahead` put it (not from the host).
    pub(super) fed: bool,
    /// The current deferred step's id is already in `ids` (fed): not uploaded at its end.
    pub(super) ids_on_device: bool,
    /// What `rows` holds once the queued work has run (empty: not known): a step's rows are
    /// uploaded only when they differ, and a pick ahead advances the positions on the device.
    dev_rows: Vec<i32>,
}

/// Most rows of a step replayed as a graph (batched decode up to this many sequences).
const STEP_ROWS: usize = 256;

impl Default for Step {
    fn default() -> Self {
        let enabled = std::env::var("BITNET_CUDA_GRAPHS").map_or(true, |v| v != "0");
        Step {
            enabled,
            last_n: 0,
            repeats: 0,
            active: false,
            cur_ids: Vec::new(),
            cur_rows: Vec::new(),
            rows_known: false,
            ids: None,
            rows: None,
            fed: false,
            ids_on_device: false,
            dev_rows: Vec::new(),
        }
    }
}

impl Step {
    /// A kernel queued after everything else advanced the positions of the first `n` rows on
    /// the device (by one).
    pub(super) fn advanced(&mut self, n: usize) {
        for pos in self.dev_rows.iter_mut().skip(1).step_by(2).take(n) {
            *pos += 1;
        }
    }
    /// The device rows are no longer known (the next deferred step uploads its own).
    pub(super) fn forget_rows(&mut self) {
        self.dev_rows.clear();
    }
}

impl Scratch {
    /// Ends a deferred step: uploads its token ids and rows, then issues its launches (as a
    /// graph when `graph`).
    pub(super) fn end_step(&mut self, gpu: &Gpu, graph: bool) -> Result<()> {
        let st = &mut self.step;
        if !st.active {
            return Ok(());
        }
        st.active = false;
        if let (Some(i), Some(r), true) = (st.ids.as_mut(), st.rows.as_mut(), st.rows_known) {
            if !st.ids_on_device {
                ops::write(gpu, &st.cur_ids, i)?;
            }
            if st.dev_rows != st.cur_rows {
                st.dev_rows.clear();
                ops::write(gpu, &st.cur_rows, r)?;
                st.dev_rows.extend_from_slice(&st.cur_rows);
            }
        }
        gpu.flush(graph)
    }

    /// Called by `embed`: deferral starts at the third consecutive step of the same row count.
    /// `fed`: the step's id is already in `ids` on the device (`sample_ahead`); `ids` holds a
    /// placeholder.
    pub(super) fn begin_step(
        &mut self,
        gpu: &Gpu,
        ids: &[u32],
        fed: bool,
    ) -> Result<Option<IdsArg>> {
        self.end_step(gpu, false)?;
        let n = ids.len();
        if n != self.step.last_n {
            (self.step.last_n, self.step.repeats) = (n, 0);
        }
        self.step.repeats += 1;
        if !self.step.enabled || n > STEP_ROWS || self.step.repeats < 3 {
            return Ok(None);
        }
        self.step_buffers(gpu, n)?;
        let dev = self.step.ids.as_ref().ok_or_else(|| Error::invalid("step ids"))?;
        let arg = IdsArg::device(gpu, dev, n)?;
        self.step.cur_ids.clear();
        for &i in ids {
            self.step.cur_ids.push(i32_of(i as usize)?);
        }
        (self.step.active, self.step.rows_known, self.step.ids_on_device) = (true, false, fed);
        gpu.defer();
        Ok(Some(arg))
    }

    /// The step's id and row buffers, for at least `n` rows. Reallocating them drops them
    /// from any recorded graph, so it happens only when a step outgrows them.
    pub(super) fn step_buffers(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        if self.step.ids.as_ref().is_none_or(|d| d.len() < n) {
            self.end_step(gpu, false)?;
            let cap = n.next_power_of_two().max(8);
            self.step.ids = Some(ops::zeros(gpu, cap)?);
            self.step.rows = Some(ops::zeros(gpu, 2 * cap)?);
            self.step.forget_rows();
        }
        Ok(())
    }

    /// The ids argument of a step that is not deferred and takes its `n` ids from the device.
    pub(super) fn sampled_ids(&self, gpu: &Gpu, n: usize) -> Result<IdsArg> {
        let dev =
            self.step.ids.as_ref().ok_or_else(|| Error::invalid("no id was sampled ahead"))?;
        if dev.len() < n {
            return Err(Error::invalid(format!("a fed step of {n} rows after fewer picks")));
        }
        IdsArg::device(gpu, dev, n)
    }

    /// The rows argument inside a deferred step (None: not deferring, or the step ended).
    pub(super) fn step_rows(&mut self, gpu: &Gpu, rows: &[RowPos]) -> Result<Option<RowsArg>> {
        let st = &mut self.step;
        if !st.active {
            return Ok(None);
        }
        let same = |st: &Step| -> Result<bool> {
            for (pair, r) in st.cur_rows.chunks_exact(2).zip(rows) {
                if pair != [i32_of(r.slot)?, i32_of(r.pos)?] {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if rows.len() != st.cur_ids.len() || (st.rows_known && !same(st)?) {
            self.end_step(gpu, false)?;
            return Ok(None);
        }
        if !st.rows_known {
            st.cur_rows.clear();
            for r in rows {
                st.cur_rows.push(i32_of(r.slot)?);
                st.cur_rows.push(i32_of(r.pos)?);
            }
            st.rows_known = true;
        }
        let dev = self.step.rows.as_ref().ok_or_else(|| Error::invalid("step rows"))?;
        Ok(Some(RowsArg::device(gpu, dev, rows.len())?))
    }

    /// Stages `rows` and returns the kernels' row argument (by value up to 8 rows, else a device
    /// table that is re-uploaded only when the rows change).
    pub(super) fn rows(&mut self, gpu: &Gpu, rows: &[RowPos]) -> Result<RowsArg> {
        let step = self.step_rows(gpu, rows)?;
        let same = self.rows_host.len() == rows.len()
            && self.rows_host.iter().zip(rows).all(|(&(s, p), r)| s == r.slot && p == r.pos);
        if !same {
            self.rows_host.clear();
            self.rows_host.extend(rows.iter().map(|r| (r.slot, r.pos)));
            self.rows_dev_valid = false;
        }
        if let Some(a) = step {
            return Ok(a);
        }
        if let Some(a) = RowsArg::small(&self.rows_host)? {
            return Ok(a);
        }
        if !self.rows_dev_valid {
            self.rows_table.clear();
            for &(s, p) in &self.rows_host {
                let conv = |v: usize| {
                    i32::try_from(v).map_err(|_| Error::invalid("position overflows i32"))
                };
                self.rows_table.push(conv(s)?);
                self.rows_table.push(conv(p)?);
            }
            if self.rows_dev.as_ref().is_none_or(|d| d.len() < self.rows_table.len()) {
                self.end_step(gpu, false)?;
                self.rows_dev = Some(ops::zeros(gpu, self.rows_table.len().max(256))?);
            }
            let dev = self.rows_dev.as_mut().ok_or_else(|| Error::invalid("row table"))?;
            ops::write(gpu, &self.rows_table, dev)?;
            self.rows_dev_valid = true;
        }
        let dev = self.rows_dev.as_ref().ok_or_else(|| Error::invalid("row table"))?;
        RowsArg::device(gpu, dev, rows.len())
    }

    pub(super) fn ids(&mut self, gpu: &Gpu, ids: &[u32]) -> Result<IdsArg> {
        if let Some(a) = IdsArg::small(ids)? {
            return Ok(a);
        }
        self.ids_host.clear();
        for &i in ids {
            self.ids_host.push(
                i32::try_from(i)
                    .map_err(|_| Error::invalid(format!("token id {i} overflows i32")))?,
            );
        }
        if self.ids_dev.as_ref().is_none_or(|d| d.len() < ids.len()) {
            self.end_step(gpu, false)?;
            self.ids_dev = Some(ops::zeros(gpu, ids.len().max(256))?);
        }
        let dev = self.ids_dev.as_mut().ok_or_else(|| Error::invalid("id table"))?;
        ops::write(gpu, &self.ids_host, dev)?;
        IdsArg::device(gpu, dev, ids.len())
    }
}
