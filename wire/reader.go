package wire

import (
	"errors"
	"io"
	"sync/atomic"
)

// reader is a buffered reader that never reads past what the caller said it
// may need, so large page reads bypass the buffer and go straight from the
// socket into the caller's memory.
type reader struct {
	src  io.Reader
	buf  []byte
	r, w int
	// read counts bytes taken from src; atomic because Conn.BytesRead may
	// be called from anywhere.
	read atomic.Uint64
}

// directMin: reads at least this big skip the buffer (one copy, kernel → caller).
const directMin = 16 << 10

func (r *reader) buffered() int { return r.w - r.r }

// fill reads once from src, at most limit more bytes, into the buffer. It
// returns io.EOF only when nothing was read.
func (r *reader) fill(limit int) error {
	if r.r == r.w {
		r.r, r.w = 0, 0
	} else if r.r > 0 && len(r.buf)-r.w < limit {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	end := min(len(r.buf), r.w+limit)
	for {
		n, err := r.src.Read(r.buf[r.w:end])
		r.w += n
		r.read.Add(uint64(n))
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// next returns the next n bytes (n ≤ len(buf)), valid until the next call.
// It reads at most ahead bytes beyond them.
func (r *reader) next(n, ahead int) ([]byte, error) {
	for r.buffered() < n {
		if err := r.fill(n - r.buffered() + ahead); err != nil {
			return nil, noEOF(err)
		}
	}
	p := r.buf[r.r : r.r+n]
	r.r += n
	return p, nil
}

// readFull fills p. Small reads go through the buffer, reading ahead at
// most ahead bytes beyond p.
func (r *reader) readFull(p []byte, ahead int) error {
	n := copy(p, r.buf[r.r:r.w])
	r.r += n
	p = p[n:]
	for len(p) > 0 {
		if len(p) >= directMin {
			n, err := io.ReadFull(r.src, p)
			r.read.Add(uint64(n))
			return noEOF(err)
		}
		if err := r.fill(len(p) + ahead); err != nil {
			return noEOF(err)
		}
		n := copy(p, r.buf[r.r:r.w])
		r.r += n
		p = p[n:]
	}
	return nil
}

// readVec fills the slices of dsts in order: what is buffered is copied,
// the rest is read with one readv per batch where the source is a socket.
// iov is scratch space; the grown scratch is returned.
func (r *reader) readVec(dsts [][]byte, ahead int, iov [][]byte) ([][]byte, error) {
	iov = iov[:0]
	total := 0
	for _, d := range dsts {
		n := copy(d, r.buf[r.r:r.w])
		r.r += n
		if len(d) > n {
			iov = append(iov, d[n:])
			total += len(d) - n
		}
	}
	if total >= directMin {
		done, err := readvFull(r.src, iov, &r.read)
		if done {
			clear(iov)
			return iov, noEOF(err)
		}
	}
	for i, d := range iov {
		total -= len(d)
		if err := r.readFull(d, total+ahead); err != nil {
			clear(iov)
			return iov, err
		}
		iov[i] = nil
	}
	return iov, nil
}

func (r *reader) discard(n int64) error {
	for n > 0 {
		if r.buffered() == 0 {
			if err := r.fill(int(min(n, int64(len(r.buf))))); err != nil {
				return noEOF(err)
			}
		}
		k := min(int64(r.buffered()), n)
		r.r += int(k)
		n -= k
	}
	return nil
}

// noEOF: inside a frame, the stream ending is truncation.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
