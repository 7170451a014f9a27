// Package report defines the figures every migration reports, as JSON: the
// source writes the report, merging what the destination sent at completion.
package report

import (
	"math/bits"
	"slices"
	"time"
)

// Outcome of a migration, and the exit status dmig gives it.
type Outcome string

const (
	// Completed: the guest runs on the destination with every page placed.
	Completed Outcome = "completed"
	// Aborted: failed before the destination resumed; the source guest runs
	// on, its memory untouched.
	Aborted Outcome = "aborted"
	// FailedAfterResume: the destination resumed, then the migration could
	// not finish (a peer or the link was lost). See docs/failures.md.
	FailedAfterResume Outcome = "failed-after-resume"
)

// Report is the JSON report of one migration.
type Report struct {
	Mode    string  `json:"mode"`
	Guest   string  `json:"guest"`
	Outcome Outcome `json:"outcome"`
	Error   string  `json:"error,omitempty"`
	// TotalMS runs from the start to the destination's word that the
	// migration completed (every page placed), or to the failure.
	TotalMS float64 `json:"total_ms"`
	// TeardownMS is what the source took after completion to finish its
	// guest and let go of its memory (write-protection, mappings: about a
	// second at 8 GiB), not part of TotalMS.
	TeardownMS float64 `json:"teardown_ms,omitempty"`
	// DowntimeMS is how long the guest ran nowhere. dmig's engine reports
	// its own pause to the destination's word that the guest resumed; in
	// dmig compare's reports, and QEMU's modes' (qemu.MigrateNative), it
	// is guest-visible: from the source QEMU's STOP event to the
	// destination's run point, by QMP timestamps (qemu.GuestDowntime).
	DowntimeMS float64 `json:"downtime_ms"`
	// ReportedDowntimeMS is the tool's own figure where DowntimeMS is
	// guest-visible: for QEMU's modes query-migrate's downtime (the
	// source's stop to the source's completion, before the destination
	// has loaded the device state and started); for dmig's the engine's
	// pause to resume (in dmig compare less the RAM oracle's pause).
	ReportedDowntimeMS float64 `json:"reported_downtime_ms,omitempty"`
	// DowntimeWarning says why DowntimeMS is the tool's own figure after
	// all (an event the guest-visible figure needs was missing).
	DowntimeWarning string `json:"downtime_warning,omitempty"`
	// Restarts counts attempts that aborted before Go (the guest running on)
	// and were started over.
	Restarts int `json:"restarts,omitempty"`
	// Recoveries counts reconnections after the link failed past Go.
	Recoveries     int         `json:"recoveries,omitempty"`
	BytesSent      uint64      `json:"bytes_sent"`
	Iterations     int         `json:"iterations"`
	PostcopyPages  uint64      `json:"postcopy_pages"` // pending at switchover
	Pages          Pages       `json:"pages"`
	FaultLatencyUS Latency     `json:"fault_latency_us"`
	Storage        Storage     `json:"storage"`
	IterationLog   []Iteration `json:"iteration_log,omitempty"`
	GuestPages     uint64      `json:"guest_pages"`
	// LayoutMS is the time the passes waited for guest layouts (hybrid),
	// part of TotalMS: the guest agent walks the whole buffer pool for
	// each, mostly while the source sets up or a pass runs.
	LayoutMS float64 `json:"layout_ms,omitempty"`
	// Compressed: page data went compressed, with Codec ("zstd", "s2");
	// BytesSent counts the compressed bytes.
	Compressed bool   `json:"compressed,omitempty"`
	Codec      string `json:"codec,omitempty"`
	// Refs (hybrid mode) says how much of the RAM went as storage
	// references and why the rest did not.
	Refs *Refs `json:"refs,omitempty"`
	// Bandwidth: the cap and the rate the page traffic took.
	Bandwidth Bandwidth `json:"bandwidth"`
}

// Refs are a hybrid migration's storage-reference figures, from the
// source: how the first pre-copy pass, which sends every guest page once,
// sent each, and what the first pass's layout was. Pages the destination
// verified from storage, and those whose check failed and went again as
// data, are Pages.StorageVerified and Pages.StorageMismatch.
type Refs struct {
	// Layout is the layout endpoint ("" : none, so no page went by
	// reference).
	Layout string `json:"layout"`
	// LayoutPages: guest pages the first pass's layout named.
	LayoutPages uint64 `json:"layout_pages"`
	// LayoutAgeMS: how old the layout was when the agent answered, and
	// whether it came from the agent's cache (both as the agent said; 0
	// and false from an agent that does not say).
	LayoutAgeMS float64 `json:"layout_age_ms,omitempty"`
	Cached      bool    `json:"layout_cached,omitempty"`
	// PoolCleanPages and PoolDirtyPages: the buffer pool's clean and dirty
	// pages (4 KiB) by the database's counters when the agent answered.
	PoolCleanPages uint64 `json:"pool_clean_pages,omitempty"`
	PoolDirtyPages uint64 `json:"pool_dirty_pages,omitempty"`
	// Refreshed: why the agent's cached layout was replaced by a fresh one
	// for the first pass (too old, or too small for the pool).
	Refreshed string `json:"refreshed,omitempty"`
	// Warning: what was wrong with the first pass's layout and could not
	// be mended (a failed fetch, a fresh layout still far short of the
	// pool).
	Warning string `json:"warning,omitempty"`
	// FirstPass: every guest page of the first pass by route.
	FirstPass Routes `json:"first_pass"`
}

// Routes counts pages by how they went, and why not by reference.
type Routes struct {
	Reference uint64 `json:"reference"` // a storage reference
	Zero      uint64 `json:"zero"`      // all zeros: a few bytes either way
	// NotInLayout: data, the layout not naming the page: not a clean pool
	// page (outside the buffer pool, in a dirty frame, loaded after the
	// layout, or of a tablespace on no disk the layout knows).
	NotInLayout uint64 `json:"not_in_layout"`
	// NoLayout: data, the pass having no layout (no endpoint, or the
	// fetch failed).
	NoLayout uint64 `json:"no_layout"`
	// Refused: data, named on a disk whose key another disk of the
	// layout shares.
	Refused uint64 `json:"disk_refused"`
}

// Bandwidth is the source's cap and the rate its page traffic (bulk
// batches and post-copy fault replies, the frames the cap paces) took.
// The control connection (session set-up, pass ends, switchover, device
// state) is not paced and not counted here; BytesSent counts it.
type Bandwidth struct {
	// MaxBytesPerS: the cap in bytes/s at the end of the migration (0: none).
	MaxBytesPerS uint64 `json:"max_bytes_per_s"`
	// MeanBytesPerS: Bytes over the time from the first paced write to the
	// last.
	MeanBytesPerS float64 `json:"mean_bytes_per_s"`
	// PeakBytesPerS: the most bytes written in one second (1 s windows
	// aligned on 50 ms).
	PeakBytesPerS float64 `json:"peak_1s_bytes_per_s"`
	// Bytes: page traffic written, frames whole; UrgentBytes: the part
	// that answered post-copy faults (exempt from waiting up to a budget).
	Bytes       uint64 `json:"bytes"`
	UrgentBytes uint64 `json:"urgent_bytes"`
	// Changes: the cap's changes while the migration ran (dmig
	// set-bandwidth), oldest first; none if it kept its cap. With them,
	// MeanBytesPerS and PeakBytesPerS span several caps: the rate under
	// each is its changes' BytesBefore apart over their ElapsedS apart.
	Changes []BandwidthChange `json:"changes,omitempty"`
	// ChangesDropped: changes past the first 256, not listed.
	ChangesDropped int `json:"changes_dropped,omitempty"`
}

// BandwidthChange is one change of a running migration's cap.
type BandwidthChange struct {
	At            time.Time `json:"at"`
	ElapsedS      float64   `json:"elapsed_s"`        // since the migration's cap was set up, at its start
	FromBytesPerS uint64    `json:"from_bytes_per_s"` // 0: none
	ToBytesPerS   uint64    `json:"to_bytes_per_s"`   // 0: none
	// BytesBefore: page traffic paced before the change.
	BytesBefore uint64 `json:"bytes_before"`
}

// Pages counts pages by the route they took.
type Pages struct {
	Data            uint64 `json:"data"`
	Zero            uint64 `json:"zero"`
	StorageVerified uint64 `json:"storage_verified"`
	StorageMismatch uint64 `json:"storage_mismatch"`
	PostcopyFault   uint64 `json:"postcopy_fault"`
	Prefetch        uint64 `json:"prefetch"`
	// StorageResent: pages whose reference failed before switchover and
	// that the source sent again as data in a later pre-copy pass (also
	// counted in Data or Zero).
	StorageResent uint64 `json:"storage_resent"`
	// SentAgain: sends of a page beyond its first, on any connection: a
	// page the guest wrote after it was sent goes again in a later pass,
	// a failed reference goes again as data, a page pushed or served after
	// switchover may have gone before. Every route counts each page it
	// carried, so Data + Zero + StorageVerified ≤ GuestPages + SentAgain.
	SentAgain uint64 `json:"sent_again"`
}

// Storage are the destination's shared-storage figures.
type Storage struct {
	BytesRead uint64  `json:"storage_bytes_read"`
	MBps      float64 `json:"storage_read_mbps"`
	// PostcopyPages: pages owed after switchover placed from storage
	// (pushed references and faults); part of the storage-verified pages.
	PostcopyPages uint64 `json:"postcopy_pages"`
	// CarriedPages: references still unchecked at switchover. Their pages
	// were made missing and restored after resume (by fault or in the
	// background) rather than while the guest was paused.
	CarriedPages uint64 `json:"carried_pages"`
	// FaultLatencyUS: post-copy faults resolved from shared storage.
	FaultLatencyUS Latency `json:"fault_latency_us"`
}

// Latency is a distribution summary in microseconds.
type Latency struct {
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
	Count int     `json:"count"`
	// Dist is the histogram as QEMU's postcopy-latency-dist (QEMU 10.1):
	// element N counts the samples in [2^N, 2^(N+1)) µs, element 0 also
	// those under 1 µs, the last also everything longer. Its elements sum
	// to Count. Absent with no samples.
	Dist []uint64 `json:"dist,omitempty"`
}

// DistBuckets is the number of histogram buckets, QEMU's: the last starts
// at 2^23 µs (8.4 s).
const DistBuckets = 24

// Bucket is the histogram bucket of a latency (see Latency.Dist).
func Bucket(d time.Duration) int {
	us := d.Microseconds()
	if us <= 0 {
		return 0
	}
	return min(bits.Len64(uint64(us))-1, DistBuckets-1)
}

// Iteration describes one pre-copy pass.
type Iteration struct {
	Pages      uint64  `json:"pages"`
	Bytes      uint64  `json:"bytes"`
	MS         float64 `json:"ms"`
	DirtyPages uint64  `json:"dirty_after"`
}

// Dest is what the destination reports at completion.
type Dest struct {
	Pages          Pages   `json:"pages"`
	FaultLatencyUS Latency `json:"fault_latency_us"`
	Storage        Storage `json:"storage"`
	ResumeMS       float64 `json:"resume_ms"` // switchover received → guest resumed
	// Recoveries counts the source's reconnections after a lost link
	// (or a restarted serve) that the session survived.
	Recoveries int `json:"recoveries,omitempty"`
}

// Summarize computes a latency summary of samples.
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	dist := make([]uint64, DistBuckets)
	for _, d := range s {
		dist[Bucket(d)]++
	}
	return Latency{
		P50:   us(s[len(s)/2]),
		P99:   us(s[min(len(s)-1, len(s)*99/100)]),
		Max:   us(s[len(s)-1]),
		Count: len(s),
		Dist:  dist,
	}
}

// MS converts a duration to fractional milliseconds.
func MS(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
