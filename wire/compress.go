package wire

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// frameCompressed in a frame header's flags: the page data of this
// PageBatch is one zstd frame of the pages' bytes, which must decode to
// exactly PageSize bytes per KindData entry. Only on bulk connections of a
// session whose Hello has FlagCompress.
const frameCompressed = 1 << 0

// minSaving: a batch goes compressed only if that saves at least 1/minSaving
// of its page data; otherwise the receiver's decompression and the copy
// out of its buffer would buy nothing (already compressed or random data).
const minSaving = 16

// compressor packs a batch's page data (Conn write side, under wmu).
type compressor struct {
	enc      *zstd.Encoder
	src, dst []byte
}

// compress returns the zstd frame of the concatenated pages, or false if it
// does not save enough to be worth sending.
func (z *compressor) compress(pages [][]byte) ([]byte, bool, error) {
	if z.enc == nil {
		// The fastest level: on a link of ~1 Gbit/s it roughly halves the
		// bytes of guest memory (2.7x on a MariaDB guest's non-zero pages)
		// at a few hundred MB/s a core, so the link stays the bottleneck.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
		if err != nil {
			return nil, false, fmt.Errorf("zstd encoder: %w", err)
		}
		z.enc = enc
	}
	z.src = z.src[:0]
	for _, p := range pages {
		z.src = append(z.src, p...)
	}
	z.dst = z.enc.EncodeAll(z.src, z.dst[:0])
	if len(z.dst) > len(z.src)-len(z.src)/minSaving {
		return nil, false, nil
	}
	return z.dst, true, nil
}

// decompressor unpacks a compressed batch's page data (Conn read side).
type decompressor struct {
	dec *zstd.Decoder
	raw []byte
}

// decompress decodes src, which must hold exactly n bytes. The decoder
// writes no more than n, whatever src claims.
func (z *decompressor) decompress(src []byte, n int) ([]byte, error) {
	if z.dec == nil {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(uint64(MaxBatchDataPages*PageSize)))
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		z.dec = dec
	}
	if cap(z.raw) < n {
		z.raw = make([]byte, 0, MaxBatchDataPages*PageSize)
	}
	out, err := z.dec.DecodeAll(src, z.raw[:0:n])
	if err != nil {
		return nil, fmt.Errorf("%w: compressed page data: %w", ErrMalformed, err)
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: compressed page data holds %d bytes, the table names %d", ErrMalformed, len(out), n)
	}
	return out, nil
}
