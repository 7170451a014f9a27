package wire

import (
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is how a session's bulk connections compress batches' page data
// (Hello's FlagCompress or FlagCompressS2).
type Codec uint8

const (
	CodecNone Codec = iota
	// CodecZstd: zstd at its fastest level. It takes the most bytes off
	// (2.4-4x on database guests' non-zero pages) at ~200-400 MB/s a core:
	// for links that are the bottleneck, about 1 Gbit/s and below.
	CodecZstd
	// CodecS2: S2 (Snappy's extension): 1.5-2x zstd's bytes at four times
	// its speed, and a quarter of its decoding CPU: for when the cores are
	// the bottleneck, a busy host or a link above ~1 Gbit/s.
	CodecS2
)

// CodecNames are the codec names ParseCodec takes, for flags and configs.
func CodecNames() []string { return []string{"zstd", "s2"} }

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec returns the codec of a name in CodecNames ("" is zstd).
func ParseCodec(name string) (Codec, error) {
	switch name {
	case "", "zstd":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	}
	return CodecNone, fmt.Errorf("unknown compression codec %q (want zstd or s2)", name)
}

// flag is the Hello flag that agrees on c.
func (c Codec) flag() HelloFlags {
	switch c {
	case CodecZstd:
		return FlagCompress
	case CodecS2:
		return FlagCompressS2
	}
	return 0
}

// frameFlag marks a PageBatch frame whose page data went through c.
func (c Codec) frameFlag() byte {
	switch c {
	case CodecZstd:
		return frameCompressed
	case CodecS2:
		return frameCompressedS2
	}
	return 0
}

// Frame header flags of a PageBatch whose page data is compressed, which
// must decode to exactly PageSize bytes per KindData entry; only on bulk
// connections of a session whose Hello agreed on that codec.
const (
	frameCompressed   = 1 << 0 // one zstd frame of the pages' bytes
	frameCompressedS2 = 1 << 1 // one S2 block of the pages' bytes
)

// minSaving: a batch goes compressed only if that saves at least 1/minSaving
// of its page data; otherwise the receiver's decompression and the copy
// out of its buffer would buy nothing (already compressed or random data).
const minSaving = 16

// compressor packs a batch's page data (Conn write side, under wmu).
type compressor struct {
	enc      *zstd.Encoder
	src, dst []byte
}

// compress returns the page data of the concatenated pages compressed with
// codec, or false if that does not save enough to be worth sending.
func (z *compressor) compress(codec Codec, pages [][]byte) ([]byte, bool, error) {
	z.src = z.src[:0]
	for _, p := range pages {
		z.src = append(z.src, p...)
	}
	switch codec {
	case CodecZstd:
		if z.enc == nil {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
				zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
			if err != nil {
				return nil, false, fmt.Errorf("zstd encoder: %w", err)
			}
			z.enc = enc
		}
		z.dst = z.enc.EncodeAll(z.src, z.dst[:0])
	case CodecS2:
		if n := s2.MaxEncodedLen(len(z.src)); cap(z.dst) < n {
			z.dst = make([]byte, n)
		}
		z.dst = s2.Encode(z.dst[:cap(z.dst)], z.src)
	default:
		return nil, false, nil
	}
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

// decompress decodes src, compressed with codec, which must hold exactly n
// bytes. The decoder writes no more than n, whatever src claims.
func (z *decompressor) decompress(codec Codec, src []byte, n int) ([]byte, error) {
	if cap(z.raw) < n {
		z.raw = make([]byte, 0, MaxBatchDataPages*PageSize)
	}
	var out []byte
	var err error
	switch codec {
	case CodecZstd:
		if z.dec == nil {
			dec, derr := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
				zstd.WithDecoderMaxMemory(uint64(MaxBatchDataPages*PageSize)))
			if derr != nil {
				return nil, fmt.Errorf("zstd decoder: %w", derr)
			}
			z.dec = dec
		}
		out, err = z.dec.DecodeAll(src, z.raw[:0:n])
	case CodecS2:
		// The block states its length first: check it before decoding, so
		// that a lying one neither allocates nor decodes.
		var l int
		if l, err = s2.DecodedLen(src); err == nil && l != n {
			return nil, fmt.Errorf("%w: compressed page data holds %d bytes, the table names %d", ErrMalformed, l, n)
		}
		if err == nil {
			out, err = s2.Decode(z.raw[:n], src)
		}
	default:
		return nil, fmt.Errorf("%w: page data compressed with %s", ErrMalformed, codec)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: compressed page data (%s): %w", ErrMalformed, codec, err)
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: compressed page data holds %d bytes, the table names %d", ErrMalformed, len(out), n)
	}
	return out, nil
}

// Codec is the compression codec h agrees on (CodecNone: none).
func (h *Hello) Codec() Codec {
	switch {
	case h.Flags&FlagCompressS2 != 0:
		return CodecS2
	case h.Flags&FlagCompress != 0:
		return CodecZstd
	}
	return CodecNone
}

// SetCodec sets h's compression flags to agree on c.
func (h *Hello) SetCodec(c Codec) {
	h.Flags = h.Flags&^(FlagCompress|FlagCompressS2) | c.flag()
}
