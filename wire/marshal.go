package wire

import "fmt"

// Marshal encodes m as one whole frame, page data included. Conn.WriteFrame
// sends the same bytes without building them in one buffer.
func Marshal(m Message) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("marshal %s: %w", m.Type(), err)
	}
	b := m.appendPayload(make([]byte, frameHeaderLen))
	if pc, ok := m.(pageCarrier); ok {
		for _, d := range pc.appendPageData(nil) {
			b = append(b, d...)
		}
	}
	n := len(b) - frameHeaderLen
	if uint64(n) > uint64(m.Type().maxLen()) {
		return nil, fmt.Errorf("marshal %s: %w: %d bytes, limit %d", m.Type(), ErrFrameTooLarge, n, m.Type().maxLen())
	}
	b[0] = byte(m.Type())
	le.PutUint32(b[4:], uint32(n))
	return b, nil
}

// Unmarshal decodes one whole frame, checking it as ReadFrame does except for
// the connection role and session geometry. Page data in the result aliases
// frame.
func Unmarshal(frame []byte) (Message, error) {
	if len(frame) < frameHeaderLen {
		return nil, fmt.Errorf("unmarshal frame: %w: %d bytes", ErrTruncated, len(frame))
	}
	typ, n := Type(frame[0]), le.Uint32(frame[4:])
	switch {
	case typ.role() == 0:
		return nil, fmt.Errorf("unmarshal frame: %w %d", ErrUnknownType, frame[0])
	case frame[1] != 0 || frame[2] != 0 || frame[3] != 0:
		return nil, fmt.Errorf("unmarshal %s: %w: flags %#x reserved %#x", typ, ErrMalformed, frame[1], le.Uint16(frame[2:]))
	case n > typ.maxLen():
		return nil, fmt.Errorf("unmarshal %s: %w: %d bytes, limit %d", typ, ErrFrameTooLarge, n, typ.maxLen())
	case uint64(n) > uint64(len(frame)-frameHeaderLen):
		return nil, fmt.Errorf("unmarshal %s: %w: %d of %d payload bytes", typ, ErrTruncated, len(frame)-frameHeaderLen, n)
	case uint64(n) < uint64(len(frame)-frameHeaderLen):
		return nil, fmt.Errorf("unmarshal %s: %w: %d bytes after the frame", typ, ErrMalformed, len(frame)-frameHeaderLen-int(n))
	}
	m := newMessage(typ)
	if err := m.decode(frame[frameHeaderLen:]); err != nil {
		return nil, fmt.Errorf("unmarshal %s: %w", typ, err)
	}
	return m, nil
}
