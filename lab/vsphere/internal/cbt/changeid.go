// Package cbt models vSphere Changed Block Tracking for the lab simulator:
// change ids, the per-epoch write log, and the paging of changed areas the way
// QueryChangedDiskAreas hands them out.
//
// Invariants:
//   - a change id names a point in one epoch: "<16 epoch bytes>/<sequence>";
//     the epoch is replaced whenever the chain must break (resize, CBT reset,
//     new image), so an id from an older epoch can never match again;
//   - areas are reported at BlockSize granularity, merged, sorted and clipped
//     to the disk capacity.
package cbt

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// BlockSize is the granularity at which changed areas are reported, like the
// block size of real CBT on VMFS.
const BlockSize = 64 << 10

// Epoch identifies one unbroken CBT chain of a disk.
type Epoch [16]byte

// NewEpoch returns a random epoch. The first byte is 0x52 like the UUIDs ESXi
// puts into change ids, so ids look like the real ones.
func NewEpoch() Epoch {
	var e Epoch
	if _, err := rand.Read(e[:]); err != nil {
		panic(fmt.Sprintf("cbt: no randomness: %v", err))
	}
	e[0] = 0x52
	return e
}

// ChangeID is a point in a disk's change history.
type ChangeID struct {
	Epoch Epoch
	Seq   uint64
}

// String formats the id like ESXi does:
// "52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/27".
func (c ChangeID) String() string {
	var b strings.Builder
	for i, x := range c.Epoch {
		switch {
		case i == 8:
			b.WriteByte('-')
		case i > 0:
			b.WriteByte(' ')
		}
		b.WriteString(hex.EncodeToString([]byte{x}))
	}
	b.WriteByte('/')
	b.WriteString(strconv.FormatUint(c.Seq, 10))
	return b.String()
}

// ParseChangeID parses the format produced by String. It does not accept "*";
// callers handle that wildcard themselves.
func ParseChangeID(s string) (ChangeID, error) {
	var c ChangeID
	uuid, seq, ok := strings.Cut(s, "/")
	if !ok {
		return c, fmt.Errorf("change id %q: missing '/'", s)
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil || seq == "" || (len(seq) > 1 && seq[0] == '0') {
		return c, fmt.Errorf("change id %q: bad sequence number", s)
	}
	if len(uuid) != 16*3-1 {
		return c, fmt.Errorf("change id %q: bad epoch length", s)
	}
	for i := range c.Epoch {
		if i > 0 {
			sep := uuid[i*3-1]
			want := byte(' ')
			if i == 8 {
				want = '-'
			}
			if sep != want {
				return c, fmt.Errorf("change id %q: bad separator at %d", s, i*3-1)
			}
		}
		x, err := hex.DecodeString(uuid[i*3 : i*3+2])
		if err != nil || strings.ToLower(uuid[i*3:i*3+2]) != uuid[i*3:i*3+2] {
			return c, fmt.Errorf("change id %q: bad hex byte at %d", s, i*3)
		}
		c.Epoch[i] = x[0]
	}
	c.Seq = n
	return c, nil
}
