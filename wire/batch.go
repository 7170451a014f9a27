package wire

import (
	"encoding/binary"
	"fmt"
)

// Entry is one page of a PageBatch.
type Entry struct {
	Page uint64
	Kind Kind
	Ref  Ref // KindRef only
}

// PageBatch is a run of pages of one RAM block (bulk connections, source →
// destination). Its payload is laid out so both ends touch page data once:
//
//	block u32 | iteration u32 | entries u32 | table length u32
//	table: per entry uvarint(delta<<2 | kind) [+ disk u16, offset u64, hash 16B]
//	       (delta: first entry its page, then page - previous page - 1)
//	page data: PageSize bytes per KindData entry, in entry order
//
// The sender writes the header and table from one buffer and the page data
// straight from guest memory (writev); the receiver decodes the table, then
// reads the page data straight into its destination (Conn.ReadData).
type PageBatch struct {
	Block     uint32
	Iteration uint32
	// Entries are in strictly increasing page order.
	Entries []Entry
	// Data (sending side) holds the KindData pages in entry order; each slice
	// is one or more whole pages, so a stretch of consecutive pages can be one
	// slice of guest memory. A batch returned by Conn.ReadFrame has Data nil:
	// read its pages with Conn.ReadData. A batch from Unmarshal has one slice.
	Data [][]byte

	// Sizes of what Add* added, for Full.
	tableLen, dataPages int
	lastPage            uint64
}

const batchHeaderLen = 16

func (*PageBatch) Type() Type { return TypePageBatch }

// Reset empties the batch for reuse, keeping its memory.
func (b *PageBatch) Reset(block, iteration uint32) {
	clear(b.Data) // drop references to guest memory
	*b = PageBatch{Block: block, Iteration: iteration, Entries: b.Entries[:0], Data: b.Data[:0]}
}

func (b *PageBatch) add(page uint64, kind Kind) {
	delta := page
	if len(b.Entries) > 0 {
		delta = page - b.lastPage - 1
	}
	b.tableLen += varintLen(delta<<2 | uint64(kind))
	b.lastPage = page
}

// AddData appends a data page; data must stay unchanged until the batch is
// written. Pages must be added in increasing order. A page that directly
// follows the previous one in memory extends its slice, so a contiguous
// stretch of guest memory goes out as one iovec.
func (b *PageBatch) AddData(page uint64, data []byte) {
	b.add(page, KindData)
	b.Entries = append(b.Entries, Entry{Page: page, Kind: KindData})
	b.dataPages++
	if n := len(b.Data); n > 0 && len(data) > 0 {
		prev := b.Data[n-1]
		if len(prev) > 0 && cap(prev)-len(prev) >= len(data) && &prev[:len(prev)+1][len(prev)] == &data[0] {
			b.Data[n-1] = prev[:len(prev)+len(data)]
			return
		}
	}
	b.Data = append(b.Data, data)
}

// AddZero appends an all-zero page.
func (b *PageBatch) AddZero(page uint64) {
	b.add(page, KindZero)
	b.Entries = append(b.Entries, Entry{Page: page, Kind: KindZero})
}

// AddRef appends a page the destination reads from shared storage.
func (b *PageBatch) AddRef(page uint64, ref Ref) {
	b.add(page, KindRef)
	b.tableLen += refLen
	b.Entries = append(b.Entries, Entry{Page: page, Kind: KindRef, Ref: ref})
}

// Full reports whether the pages added with Add* reached BatchTarget or a
// limit: send the batch and Reset it.
func (b *PageBatch) Full() bool {
	return b.tableLen+b.dataPages*PageSize >= BatchTarget ||
		len(b.Entries) >= MaxBatchEntries || b.dataPages >= MaxBatchDataPages
}

// DataRun returns how many entries from i on are KindData pages with
// consecutive page numbers: the caller can read them with one ReadData into
// a contiguous destination.
func (b *PageBatch) DataRun(i int) int {
	n := 0
	for j := i; j < len(b.Entries); j++ {
		e := b.Entries[j]
		if e.Kind != KindData || e.Page != b.Entries[i].Page+uint64(n) {
			break
		}
		n++
	}
	return n
}

// DataPages is the number of KindData entries.
func (b *PageBatch) DataPages() int {
	n := 0
	for _, e := range b.Entries {
		if e.Kind == KindData {
			n++
		}
	}
	return n
}

func (b *PageBatch) validate() error {
	if len(b.Entries) == 0 || len(b.Entries) > MaxBatchEntries {
		return fmt.Errorf("%w: batch of %d entries, want 1..%d", ErrRange, len(b.Entries), MaxBatchEntries)
	}
	nData := 0
	for i, e := range b.Entries {
		if e.Page >= MaxPages {
			return fmt.Errorf("%w: batch entry %d page %d", ErrRange, i, e.Page)
		}
		if i > 0 && e.Page <= b.Entries[i-1].Page {
			return fmt.Errorf("%w: batch entry %d page %d not after page %d", ErrMalformed, i, e.Page, b.Entries[i-1].Page)
		}
		switch e.Kind {
		case KindData:
			nData++
		case KindZero, KindRef:
		default:
			return fmt.Errorf("%w: batch entry %d kind %d", ErrMalformed, i, e.Kind)
		}
		if e.Kind != KindRef && e.Ref != (Ref{}) {
			return fmt.Errorf("%w: %s entry %d with a storage reference", ErrMalformed, e.Kind, i)
		}
	}
	if nData > MaxBatchDataPages {
		return fmt.Errorf("%w: batch of %d data pages, limit %d", ErrRange, nData, MaxBatchDataPages)
	}
	total := 0
	for _, d := range b.Data {
		if len(d) == 0 || len(d)%PageSize != 0 {
			return fmt.Errorf("%w: page data slice of %d bytes", ErrMalformed, len(d))
		}
		total += len(d)
	}
	if total != nData*PageSize {
		return fmt.Errorf("%w: %d data entries but %d bytes of page data", ErrMalformed, nData, total)
	}
	return nil
}

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func (b *PageBatch) appendPayload(p []byte) []byte {
	start := len(p)
	p = le.AppendUint32(p, b.Block)
	p = le.AppendUint32(p, b.Iteration)
	p = le.AppendUint32(p, uint32(len(b.Entries)))
	p = le.AppendUint32(p, 0) // table length, set below
	tableStart := len(p)
	var prev uint64
	for i, e := range b.Entries {
		delta := e.Page
		if i > 0 {
			delta = e.Page - prev - 1
		}
		prev = e.Page
		p = binary.AppendUvarint(p, delta<<2|uint64(e.Kind))
		if e.Kind == KindRef {
			p = appendRef(p, e.Ref)
		}
	}
	le.PutUint32(p[start+12:], uint32(len(p)-tableStart))
	return p
}

func (b *PageBatch) appendPageData(iov [][]byte) [][]byte { return append(iov, b.Data...) }

// batchHeader is the fixed part of a PageBatch payload.
type batchHeader struct {
	block, iteration, entries, tableLen uint32
}

// parseBatchHeader checks a PageBatch header against its payload's length
// and returns the pages of data that follow the table. A compressed
// batch's length does not tell them, its table does: it returns -1 for them
// then (parseTable only counts), and requires some compressed data.
func parseBatchHeader(p []byte, payloadLen uint32, compressed bool) (batchHeader, int, error) {
	h := batchHeader{
		block: le.Uint32(p[0:]), iteration: le.Uint32(p[4:]),
		entries: le.Uint32(p[8:]), tableLen: le.Uint32(p[12:]),
	}
	if h.entries == 0 || h.entries > MaxBatchEntries {
		return h, 0, fmt.Errorf("%w: batch of %d entries, want 1..%d", ErrRange, h.entries, MaxBatchEntries)
	}
	room := payloadLen - batchHeaderLen
	if compressed && room > 0 {
		room-- // at least a byte of compressed data
	}
	if h.tableLen > MaxBatchTable || h.tableLen > room || h.tableLen < h.entries {
		return h, 0, fmt.Errorf("%w: batch table of %d bytes for %d entries in a %d-byte payload (compressed: %v)", ErrMalformed, h.tableLen, h.entries, payloadLen, compressed)
	}
	if compressed {
		return h, -1, nil
	}
	data := payloadLen - batchHeaderLen - h.tableLen
	if data%PageSize != 0 || data/PageSize > MaxBatchDataPages {
		return h, 0, fmt.Errorf("%w: batch page data of %d bytes", ErrMalformed, data)
	}
	return h, int(data / PageSize), nil
}

func dataEntries(es []Entry) int {
	n := 0
	for _, e := range es {
		if e.Kind == KindData {
			n++
		}
	}
	return n
}

// parseTable decodes n entries from table into entries (reusing its memory)
// and checks that exactly nData of them are KindData (unless nData < 0).
func parseTable(table []byte, n uint32, nData int, entries []Entry) ([]Entry, error) {
	entries = entries[:0]
	d := decoder{b: table}
	var prev uint64
	seen := 0
	for i := uint32(0); i < n; i++ {
		v := d.uvarint("entry")
		if d.err != nil {
			return entries, d.err
		}
		kind, delta := Kind(v&3), v>>2
		page := delta
		if i > 0 {
			page = prev + delta + 1 // cannot wrap: prev < MaxPages, delta < 2^62
		}
		if page >= MaxPages {
			return entries, fmt.Errorf("%w: batch entry %d page %d", ErrRange, i, page)
		}
		e := Entry{Page: page, Kind: kind}
		switch kind {
		case KindData:
			seen++
		case KindZero:
		case KindRef:
			e.Ref = decodeRef(&d)
		default:
			return entries, fmt.Errorf("%w: batch entry %d kind %d", ErrMalformed, i, kind)
		}
		entries = append(entries, e)
		prev = page
	}
	if err := d.finish(); err != nil {
		return entries, err
	}
	if nData >= 0 && seen != nData {
		return entries, fmt.Errorf("%w: %d data entries but %d pages of data", ErrMalformed, seen, nData)
	}
	return entries, nil
}

func (b *PageBatch) decode(p []byte) error {
	if len(p) < batchHeaderLen {
		return fmt.Errorf("%w: batch payload of %d bytes", ErrTruncated, len(p))
	}
	h, nData, err := parseBatchHeader(p, uint32(len(p)), false)
	if err != nil {
		return err
	}
	b.Reset(h.block, h.iteration)
	table := p[batchHeaderLen : batchHeaderLen+h.tableLen]
	if b.Entries, err = parseTable(table, h.entries, nData, b.Entries); err != nil {
		return err
	}
	b.Data = nil
	if nData > 0 {
		b.Data = [][]byte{p[batchHeaderLen+h.tableLen:]}
	}
	return nil
}

// stripePages is how many consecutive pages go to one bulk connection
// before the next takes over: one batch's worth.
const stripePages = BatchTarget / PageSize

// BulkConn is the bulk connection (of n) that carries page of block. Each
// page always travels on the same connection, so its versions from
// successive iterations (and post-copy pushes) arrive in the order sent;
// stripes of a batch's worth of pages keep batches contiguous and spread
// the guest evenly.
func BulkConn(block uint32, page uint64, n int) int {
	return int((uint64(block) + page/stripePages) % uint64(n))
}
