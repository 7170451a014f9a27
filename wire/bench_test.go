package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"syscall"
	"testing"
	"time"
)

// benchBytes is the guest RAM moved per transfer.
const benchBytes = 1 << 30

// BenchmarkLoopback moves 1 GiB of pages over loopback TCP as page batches
// (encode, writev, decode, read into place) and, in the same run, the same
// bytes with a plain io.Copy into a plain read, and reports the engine's
// throughput as a ratio to the raw one (goal ≥ 0.9). "contiguous" sends runs
// of consecutive pages; "scattered" sends every other page per batch, so
// each page is its own iovec on send and its own read on receive.
//
//	go test ./wire -run '^$' -bench Loopback -benchtime 3x
func BenchmarkLoopback(b *testing.B) {
	src := make([]byte, benchBytes)
	dst := make([]byte, benchBytes)
	for off := 0; off < benchBytes; off += PageSize {
		binary.LittleEndian.PutUint64(src[off:], uint64(off)|1)
		binary.LittleEndian.PutUint64(src[off+PageSize/2:], ^uint64(off))
		dst[off] = 1 // fault the destination in before timing anything
	}
	for _, scattered := range []bool{false, true} {
		name := "contiguous"
		if scattered {
			name = "scattered"
		}
		b.Run(name, func(b *testing.B) {
			var raw, chunked, eng, rawCPU, chunkedCPU, engCPU time.Duration
			for i := range b.N {
				c0 := cpuTime()
				raw += rawTransfer(b, src, dst, 0)
				c1 := cpuTime()
				rawCPU += c1 - c0
				if i == 0 && !bytes.Equal(src, dst) {
					b.Fatal("raw copy garbled the bytes")
				}
				c0 = cpuTime()
				chunked += rawTransfer(b, src, dst, BatchTarget)
				c1 = cpuTime()
				chunkedCPU += c1 - c0
				if i == 0 {
					clear(dst)
				}
				c0 = cpuTime()
				eng += wireTransfer(b, src, dst, scattered)
				c1 = cpuTime()
				engCPU += c1 - c0
				if i == 0 && !bytes.Equal(src, dst) {
					b.Fatal("wire transfer garbled the pages")
				}
			}
			// Throughput ratios (raw time / wire time; > 1: wire is faster).
			b.ReportMetric(raw.Seconds()/eng.Seconds(), "ratio")
			b.ReportMetric(chunked.Seconds()/eng.Seconds(), "ratio-1MiB")
			// The same from CPU time (both ends, this process), which other
			// load on the machine disturbs far less than wall time.
			b.ReportMetric(rawCPU.Seconds()/engCPU.Seconds(), "cpu-ratio")
			b.ReportMetric(chunkedCPU.Seconds()/engCPU.Seconds(), "cpu-ratio-1MiB")
			b.ReportMetric(float64(b.N)*benchBytes/raw.Seconds()/1e9, "raw-GB/s")
			b.ReportMetric(float64(b.N)*benchBytes/chunked.Seconds()/1e9, "raw1MiB-GB/s")
			b.ReportMetric(float64(b.N)*benchBytes/eng.Seconds()/1e9, "wire-GB/s")
		})
	}
}

// rawTransfer moves src into dst over a fresh loopback connection: with
// chunk 0 one io.Copy into one read of everything, else plain writes and
// reads of chunk bytes (what the engine does, minus the protocol).
// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rawTransfer(b *testing.B, src, dst []byte, chunk int) time.Duration {
	a, c := tcpPair(b)
	defer a.Close()
	defer c.Close()
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		if chunk == 0 {
			_, err := io.Copy(a, bytes.NewReader(src))
			errc <- err
			return
		}
		for off := 0; off < len(src); off += chunk {
			if _, err := a.Write(src[off : off+chunk]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	step := len(dst)
	if chunk > 0 {
		step = chunk
	}
	for off := 0; off < len(dst); off += step {
		if _, err := io.ReadFull(c, dst[off:off+step]); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return d
}

func wireTransfer(b *testing.B, src, dst []byte, scattered bool) time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, c := tcpPair(b)
	sender, receiver := NewConn(a, RoleBulk, 0), NewConn(c, RoleBulk, 0)
	defer sender.Close()
	defer receiver.Close()
	pages := uint64(len(src) / PageSize)
	pg := func(p uint64) []byte { return src[p*PageSize : (p+1)*PageSize] }
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		var batch PageBatch
		send := func() error {
			err := sender.WriteFrame(ctx, &batch)
			batch.Reset(0, 1)
			return err
		}
		batch.Reset(0, 1)
		for base := uint64(0); base < pages; base += 2 * BatchTarget / PageSize {
			if !scattered {
				for p := base; p < min(base+2*BatchTarget/PageSize, pages); p++ {
					if batch.AddData(p, pg(p)); batch.Full() {
						if err := send(); err != nil {
							errc <- err
							return
						}
					}
				}
				continue
			}
			for parity := range uint64(2) {
				for p := base + parity; p < min(base+2*BatchTarget/PageSize, pages); p += 2 {
					batch.AddData(p, pg(p))
				}
				if err := send(); err != nil {
					errc <- err
					return
				}
			}
		}
		errc <- nil
	}()
	var dsts [][]byte
	for got := uint64(0); got < pages; {
		m, err := receiver.ReadFrame(ctx)
		if err != nil {
			b.Fatal(err)
		}
		batch := m.(*PageBatch)
		dsts = dsts[:0]
		for i := 0; i < len(batch.Entries); {
			n := batch.DataRun(i)
			p := batch.Entries[i].Page
			dsts = append(dsts, dst[p*PageSize:(p+uint64(n))*PageSize])
			i += n
			got += uint64(n)
		}
		if err := receiver.ReadDataVec(dsts); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkEncodeBatch is the CPU cost per page of building and encoding a
// batch (the page data itself is not copied: writev sends it).
func BenchmarkEncodeBatch(b *testing.B) {
	ram := make([]byte, 256*PageSize)
	for _, kind := range []Kind{KindData, KindRef, KindZero} {
		b.Run(kind.String(), func(b *testing.B) {
			var batch PageBatch
			var buf []byte
			n := 0
			for b.Loop() {
				batch.Reset(0, 1)
				for p := uint64(0); !batch.Full(); p += 3 {
					switch kind {
					case KindData:
						batch.AddData(p, ram[p%256*PageSize:][:PageSize])
					case KindRef:
						batch.AddRef(p, Ref{Disk: 1, Offset: p * 16384})
					case KindZero:
						batch.AddZero(p)
					}
				}
				if err := batch.validate(); err != nil {
					b.Fatal(err)
				}
				buf = batch.appendPayload(buf[:0])
				n += len(batch.Entries)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/page")
		})
	}
}

// BenchmarkDecodeBatch is the CPU cost per page of decoding a batch table.
func BenchmarkDecodeBatch(b *testing.B) {
	ram := make([]byte, 256*PageSize)
	for _, kind := range []Kind{KindData, KindRef, KindZero} {
		b.Run(kind.String(), func(b *testing.B) {
			var batch PageBatch
			batch.Reset(0, 1)
			for p := uint64(0); !batch.Full(); p += 3 {
				switch kind {
				case KindData:
					batch.AddData(p, ram[p%256*PageSize:][:PageSize])
				case KindRef:
					batch.AddRef(p, Ref{Disk: 1, Offset: p * 16384})
				case KindZero:
					batch.AddZero(p)
				}
			}
			p := batch.appendPayload(nil)
			h, _, err := parseBatchHeader(p, uint32(len(p)+batch.DataPages()*PageSize), false)
			if err != nil {
				b.Fatal(err)
			}
			table := p[batchHeaderLen:]
			var entries []Entry
			n := 0
			for b.Loop() {
				if entries, err = parseTable(table, h.entries, batch.DataPages(), entries); err != nil {
					b.Fatal(err)
				}
				n += len(entries)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/page")
		})
	}
}

// BenchmarkUrgentRoundTrip is one post-copy page fetch over loopback:
// PageRequest out, PageReply with 4 KiB back, as the engine's fault path
// would do it (the floor under post-copy fault latency).
func BenchmarkUrgentRoundTrip(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dst, src := connPair(b, RoleUrgent)
	data := page(1)
	go func() {
		for {
			m, err := src.ReadFrame(ctx)
			if err != nil {
				return
			}
			req := m.(*PageRequest)
			if err := src.WriteFrame(ctx, &PageReply{Block: req.Block, Page: req.Page, Kind: KindData, Data: data}); err != nil {
				return
			}
		}
	}()
	for i := 0; b.Loop(); i++ {
		if err := dst.WriteFrame(ctx, &PageRequest{Page: uint64(i % 1000), Count: 1}); err != nil {
			b.Fatal(err)
		}
		m, err := dst.ReadFrame(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if r := m.(*PageReply); r.Page != uint64(i%1000) || len(r.Data) != PageSize {
			b.Fatalf("reply for page %d", r.Page)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/fetch")
}
