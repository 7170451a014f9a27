package bandwidth

import (
	"fmt"
	"strconv"
	"strings"
)

// MinRate is the smallest cap accepted: below it the bucket's
// granularity (a 4 KiB page) is more than 1 % of a second's bytes and the
// 5 % promise no longer holds.
const MinRate = 1_000_000

// Parse reads a rate in bytes per second: a number, optionally with an SI
// (k or K, M, G, T: powers of 1000) or IEC (Ki, Mi, Gi, Ti: powers of 1024)
// prefix, optionally followed by "B" and "/s": "125M", "125MB/s", "1Gi",
// "0" (no cap). Bits are refused with the byte figure to write instead.
// "" is 0.
func Parse(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	t = strings.TrimSuffix(t, "/s")
	lower := strings.ToLower(t)
	if strings.HasSuffix(lower, "bit") || strings.HasSuffix(lower, "bps") || (strings.HasSuffix(t, "b") && len(t) > 1) {
		return 0, fmt.Errorf("bandwidth %q: bits are not accepted; write bytes per second (1Gbit/s = 125M)", s)
	}
	t = strings.TrimSuffix(t, "B")
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], t[i:]
	}
	mult, ok := map[string]float64{
		"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
		"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
	}[unit]
	if !ok {
		return 0, fmt.Errorf("bandwidth %q: unknown unit %q: want bytes/s with k, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. 125M or 1Gi", s, unit)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bandwidth %q: want a non-negative number of bytes/s, e.g. 125M", s)
	}
	r := v * mult
	if r > 1e15 {
		return 0, fmt.Errorf("bandwidth %q: more than 1P bytes/s", s)
	}
	n := uint64(r)
	if n != 0 && n < MinRate {
		return 0, fmt.Errorf("bandwidth %q: below the smallest cap, 1M (1,000,000 bytes/s); 0 means none", s)
	}
	return n, nil
}

// Format writes a rate the way Parse reads it, in SI units ("125M",
// "1.5G"); 0 is "none".
func Format(rate uint64) string {
	if rate == 0 {
		return "none"
	}
	v, unit := float64(rate), ""
	for _, u := range []string{"k", "M", "G", "T"} {
		if v < 1000 {
			break
		}
		v, unit = v/1000, u
	}
	return strconv.FormatFloat(v, 'f', -1, 64) + unit
}

// Rate is a bandwidth flag or config value: it decodes from text (kong
// flags, YAML and JSON strings) with Parse.
type Rate uint64

// UnmarshalText parses b with Parse.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*r = Rate(v)
	return nil
}

// MarshalText writes the rate in bytes/s, as Parse reads it.
func (r Rate) MarshalText() ([]byte, error) { return strconv.AppendUint(nil, uint64(r), 10), nil }

func (r Rate) String() string { return Format(uint64(r)) }
