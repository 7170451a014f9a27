package layout

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math"
	"reflect"
	"testing"
)

func disks(names ...string) []Disk {
	d := make([]Disk, len(names))
	for i, n := range names {
		d[i] = Disk{ID: DiskID(i), Name: n}
	}
	return d
}

func TestBuildCoalesces(t *testing.T) {
	refs := []Ref{
		// out of order on purpose; Build must not reorder the caller's slice
		{GuestPage: 11, Disk: 0, Offset: 3 * PageSize},
		{GuestPage: 10, Disk: 0, Offset: 2 * PageSize},
		{GuestPage: 12, Disk: 0, Offset: 4 * PageSize},
		{GuestPage: 13, Disk: 1, Offset: 5 * PageSize}, // disk changes
		{GuestPage: 14, Disk: 1, Offset: 7 * PageSize}, // offset jumps
		{GuestPage: 16, Disk: 1, Offset: 8 * PageSize}, // guest page jumps
		{GuestPage: 17, Disk: 1, Offset: 9*PageSize + 512},
	}
	orig := append([]Ref(nil), refs...)
	l, err := Build(refs)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(refs, orig) {
		t.Errorf("Build modified its input")
	}
	want := []Run{
		{GuestPage: 10, Pages: 3, Disk: 0, Offset: 2 * PageSize},
		{GuestPage: 13, Pages: 1, Disk: 1, Offset: 5 * PageSize},
		{GuestPage: 14, Pages: 1, Disk: 1, Offset: 7 * PageSize},
		{GuestPage: 16, Pages: 1, Disk: 1, Offset: 8 * PageSize},
		{GuestPage: 17, Pages: 1, Disk: 1, Offset: 9*PageSize + 512},
	}
	if !reflect.DeepEqual(l.Runs, want) {
		t.Errorf("runs:\n got %+v\nwant %+v", l.Runs, want)
	}
	if l.Pages() != uint64(len(refs)) {
		t.Errorf("Pages() = %d, want %d", l.Pages(), len(refs))
	}

	var got []Ref
	l.Each(func(r Ref) bool { got = append(got, r); return true })
	if len(got) != len(refs) || got[0] != orig[1] || got[1] != orig[0] || got[6] != orig[6] {
		t.Errorf("Each: %+v", got)
	}
	n := 0
	l.Each(func(Ref) bool { n++; return n < 2 })
	if n != 2 {
		t.Errorf("Each did not stop: %d calls", n)
	}
	for _, r := range orig {
		if g, ok := l.Lookup(r.GuestPage); !ok || g != r {
			t.Errorf("Lookup(%d) = %+v, %v; want %+v", r.GuestPage, g, ok, r)
		}
	}
	for _, p := range []uint64{0, 9, 15, 18, math.MaxUint64} {
		if _, ok := l.Lookup(p); ok {
			t.Errorf("Lookup(%d) found a page the layout does not name", p)
		}
	}

	if _, err := Build([]Ref{{GuestPage: 1}, {GuestPage: 1, Offset: PageSize}}); !errors.Is(err, ErrOverlap) {
		t.Errorf("duplicate guest page: %v, want ErrOverlap", err)
	}
	if l, err := Build(nil); err != nil || len(l.Runs) != 0 {
		t.Errorf("Build(nil) = %+v, %v", l, err)
	}
}

func TestValidate(t *testing.T) {
	ok := Layout{Disks: disks("vda", "serial:X"), Runs: []Run{
		{GuestPage: 0, Pages: 2, Disk: 0, Offset: 0},
		{GuestPage: 2, Pages: 2, Disk: 1, Offset: 0},
		{GuestPage: 9, Pages: 1, Disk: 0, Offset: 1 << 40},
	}}
	if err := ok.Validate(10); err != nil {
		t.Fatalf("valid layout: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(l *Layout)
		pages  uint64
		want   error
	}{
		{"past guest end", func(*Layout) {}, 9, ErrOutOfRange},
		{"overlap", func(l *Layout) { l.Runs[1].GuestPage = 1 }, 10, ErrOverlap},
		{"unsorted", func(l *Layout) { l.Runs[0], l.Runs[2] = l.Runs[2], l.Runs[0] }, 10, ErrUnsorted},
		{"zero-length", func(l *Layout) { l.Runs[1].Pages = 0 }, 10, ErrEmptyRun},
		{"unknown disk", func(l *Layout) { l.Runs[2].Disk = 2 }, 10, ErrUnknownDisk},
		{"guest page overflow", func(l *Layout) { l.Runs[2].GuestPage = math.MaxUint64 }, math.MaxUint64, ErrOutOfRange},
		{"offset overflow", func(l *Layout) { l.Runs[2].Offset = math.MaxUint64 - 100 }, 10, ErrOutOfRange},
		{"disk id not its index", func(l *Layout) { l.Disks[1].ID = 0 }, 10, ErrDisk},
		{"duplicate disk name", func(l *Layout) { l.Disks[1].Name = "vda" }, 10, ErrDisk},
		{"empty disk name", func(l *Layout) { l.Disks[0].Name = "" }, 10, ErrDisk},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := Layout{Disks: append([]Disk(nil), ok.Disks...), Runs: append([]Run(nil), ok.Runs...)}
			c.mutate(&l)
			if err := l.Validate(c.pages); !errors.Is(err, c.want) {
				t.Errorf("Validate = %v, want %v", err, c.want)
			}
			if c.name != "past guest end" { // the encoding has no guest size
				if _, err := l.MarshalBinary(); !errors.Is(err, c.want) {
					t.Errorf("MarshalBinary = %v, want %v", err, c.want)
				}
			}
		})
	}
}

// sampleLayouts are the round-trip cases and the fuzz seeds.
func sampleLayouts() []*Layout {
	return append(smallLayouts(), manyRuns(2000))
}

// manyRuns makes a layout of n runs over three disks.
func manyRuns(n int) *Layout {
	many := &Layout{Generation: 1 << 40, Disks: disks("vda", "vdb", "serial:QM0001")}
	var page, off [3]uint64
	for i := range n {
		d := i % 3
		page[0] += uint64(1 + i%5)
		off[d] += uint64(i%7) * PageSize
		pages := uint32(1 + i%4)
		many.Runs = append(many.Runs, Run{GuestPage: page[0], Pages: pages, Disk: DiskID(d), Offset: off[d]})
		page[0] += uint64(pages)
		off[d] += uint64(pages) * PageSize
	}
	return many
}

func smallLayouts() []*Layout {
	return []*Layout{
		{},
		{Generation: 7, Disks: disks("vda")},
		{Generation: 1, Disks: disks("vda"), Runs: []Run{{GuestPage: 0, Pages: 1, Disk: 0, Offset: 0}}},
		{Disks: disks("vda", "loop0"), Runs: []Run{
			{GuestPage: 5, Pages: 4, Disk: 1, Offset: 1 << 50},
			{GuestPage: 9, Pages: 4, Disk: 0, Offset: 512},              // unaligned: a partition may start anywhere
			{GuestPage: 100, Pages: math.MaxUint32, Disk: 1, Offset: 0}, // backwards on disk 1
			{GuestPage: math.MaxUint64 - 1, Pages: 1, Disk: 0, Offset: math.MaxUint64 - PageSize},
		}},
	}
}

func TestRoundTrip(t *testing.T) {
	for i, l := range sampleLayouts() {
		b, err := l.MarshalBinary()
		if err != nil {
			t.Fatalf("layout %d: %v", i, err)
		}
		var got Layout
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("layout %d: %v", i, err)
		}
		if !reflect.DeepEqual(&got, l) {
			t.Errorf("layout %d: round trip changed it:\n got %+v\nwant %+v", i, got, *l)
		}
		if len(l.Runs) > 100 {
			t.Logf("%d runs, %d pages: %d bytes (%.2f bytes/run)", len(l.Runs), l.Pages(), len(b), float64(len(b))/float64(len(l.Runs)))
			if per := float64(len(b)) / float64(len(l.Runs)); per > 8 {
				t.Errorf("encoding not compact: %.1f bytes per run", per)
			}
		}
	}
}

func TestUnmarshalRejects(t *testing.T) {
	l := sampleLayouts()[3]
	good, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	before := *l

	for n := range len(good) {
		if err := l.UnmarshalBinary(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", n)
		}
	}
	for i := range len(good) {
		bad := bytes.Clone(good)
		bad[i] ^= 0x10
		if err := l.UnmarshalBinary(bad); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	if !reflect.DeepEqual(*l, before) {
		t.Errorf("a failed UnmarshalBinary changed the layout")
	}

	check := func(name string, b []byte, want error) {
		t.Helper()
		var l Layout
		if err := l.UnmarshalBinary(b); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	withCRC := func(body []byte) []byte {
		return append(body, le32(crc(body))...)
	}
	bad := bytes.Clone(good)
	bad[0] = 'X'
	check("magic", bad, ErrMagic)
	bad = bytes.Clone(good)
	bad[4] = 2
	check("version", bad, ErrVersion)
	bad = bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	check("crc", bad, ErrChecksum)
	check("short", good[:6], ErrTruncated)
	// Hand-made bodies with a valid CRC.
	check("huge disk count", withCRC([]byte("DMLY\x01\x00\xff\xff\x03")), ErrMalformed)
	check("huge run count", withCRC([]byte("DMLY\x01\x00\x00\xff\xff\xff\xff\x0f")), ErrMalformed)
	check("zero-length run", withCRC([]byte("DMLY\x01\x00\x01\x01a\x01\x00\x00\x00\x00")), ErrMalformed)
	check("unknown disk", withCRC([]byte("DMLY\x01\x00\x01\x01a\x01\x00\x01\x01\x00")), ErrMalformed)
	check("trailing bytes", withCRC([]byte("DMLY\x01\x00\x00\x00\x00")), ErrMalformed)
	check("empty disk name", withCRC([]byte("DMLY\x01\x00\x01\x00\x00")), ErrDisk)
	check("duplicate disk", withCRC([]byte("DMLY\x01\x00\x02\x01a\x01a\x00")), ErrDisk)
	check("varint overflow", withCRC([]byte("DMLY\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")), ErrMalformed)
	check("ok", withCRC([]byte("DMLY\x01\x00\x01\x01a\x01\x00\x01\x00\x00")), nil)
}

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

func FuzzUnmarshal(f *testing.F) {
	// Small seeds: the fuzzer minimizes what it finds, and that is slow on
	// inputs of kilobytes.
	for _, l := range append(smallLayouts(), manyRuns(20)) {
		b, err := l.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("DMLY\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l Layout
		if err := l.UnmarshalBinary(b); err != nil {
			return
		}
		if err := l.Validate(math.MaxUint64); err != nil {
			t.Fatalf("decoded an invalid layout: %v", err)
		}
		b2, err := l.MarshalBinary()
		if err != nil {
			t.Fatalf("cannot re-encode a decoded layout: %v", err)
		}
		var l2 Layout
		if err := l2.UnmarshalBinary(b2); err != nil || !reflect.DeepEqual(l, l2) {
			t.Fatalf("re-encoding changed the layout: %v", err)
		}
	})
}
