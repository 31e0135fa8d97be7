package cbt

import "sort"

// Extent is a byte range [Start, Start+Length) of a disk.
type Extent struct {
	Start  int64
	Length int64
}

// End returns the first byte after the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// RoundOut widens [off, off+n) to whole blocks of size block.
func RoundOut(off, n, block int64) Extent {
	start := off / block * block
	end := (off + n + block - 1) / block * block
	return Extent{Start: start, Length: end - start}
}

// Normalize sorts the extents, merges overlapping and touching ones, drops
// empty ones and clips everything to [0, capacity).
func Normalize(in []Extent, capacity int64) []Extent {
	xs := make([]Extent, 0, len(in))
	for _, e := range in {
		start, end := max(e.Start, 0), min(e.End(), capacity)
		if end > start {
			xs = append(xs, Extent{Start: start, Length: end - start})
		}
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].Start < xs[j].Start })
	out := xs[:0]
	for _, e := range xs {
		if n := len(out); n > 0 && e.Start <= out[n-1].End() {
			if e.End() > out[n-1].End() {
				out[n-1].Length = e.End() - out[n-1].Start
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// Limits of one QueryChangedDiskAreas answer. Real vSphere also answers in
// pieces; small limits here make sure clients loop until the disk is covered.
const (
	MaxAreasPerPage = 64
	MaxPageWindow   = 256 << 20
)

// Page is one answer: it covers [StartOffset, StartOffset+Length) and lists
// the changed areas inside that range.
type Page struct {
	StartOffset int64
	Length      int64
	Areas       []Extent
}

// Paginate cuts the page starting at start out of areas, which must be
// normalized. The window is at most maxWindow bytes and ends early, right after
// the last area listed, when more than maxAreas areas fall into it.
func Paginate(areas []Extent, start, capacity int64, maxAreas int, maxWindow int64) Page {
	end := min(start+maxWindow, capacity)
	p := Page{StartOffset: start, Length: max(end-start, 0)}
	i := sort.Search(len(areas), func(i int) bool { return areas[i].End() > start })
	for ; i < len(areas) && areas[i].Start < end; i++ {
		e := areas[i]
		s, t := max(e.Start, start), min(e.End(), end)
		if len(p.Areas) == maxAreas {
			p.Length = p.Areas[maxAreas-1].End() - start
			break
		}
		p.Areas = append(p.Areas, Extent{Start: s, Length: t - s})
	}
	return p
}
