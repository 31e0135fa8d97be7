package cbt

import (
	"reflect"
	"testing"
)

func TestChangeIDRoundTrip(t *testing.T) {
	e := NewEpoch()
	if e[0] != 0x52 {
		t.Fatalf("epoch starts with %#x, want 0x52", e[0])
	}
	c := ChangeID{Epoch: e, Seq: 27}
	s := c.String()
	if len(s) != 47+3 || s[23] != '-' || s[47:] != "/27" {
		t.Fatalf("unexpected format %q", s)
	}
	got, err := ParseChangeID(s)
	if err != nil || got != c {
		t.Fatalf("ParseChangeID(%q) = %v, %v; want %v", s, got, err, c)
	}
}

func TestParseChangeIDKnownValue(t *testing.T) {
	s := "52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/0"
	c, err := ParseChangeID(s)
	if err != nil {
		t.Fatal(err)
	}
	if c.Seq != 0 || c.Epoch[1] != 0x3c || c.Epoch[15] != 0x0a || c.String() != s {
		t.Fatalf("parsed %v from %q", c, s)
	}
}

func TestParseChangeIDRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"*",
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a",     // no sequence
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/",    // empty sequence
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/-1",  // negative
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/01",  // leading zero
		"52 3c 1b 2a 68 0a 03 ad e2 82 66 62 51 e4 b1 0a/1",   // no dash
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1/1",      // short
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 zz/1",   // not hex
		"52 3C 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a/1",   // upper case
		"52 3c 1b 2a 68 0a 03 ad-e2 82 66 62 51 e4 b1 0a 1/1", // long
	} {
		if c, err := ParseChangeID(s); err == nil {
			t.Errorf("ParseChangeID(%q) = %v, want error", s, c)
		}
	}
}

func TestRoundOut(t *testing.T) {
	cases := []struct{ off, n, start, length int64 }{
		{0, 1, 0, BlockSize},
		{BlockSize - 1, 2, 0, 2 * BlockSize},
		{BlockSize, BlockSize, BlockSize, BlockSize},
		{3*BlockSize + 5, 0, 3 * BlockSize, BlockSize},
	}
	for _, c := range cases {
		got := RoundOut(c.off, c.n, BlockSize)
		if got.Start != c.start || got.Length != c.length {
			t.Errorf("RoundOut(%d, %d) = %+v", c.off, c.n, got)
		}
	}
}

func TestNormalizeMergesSortsAndClips(t *testing.T) {
	in := []Extent{{100, 50}, {0, 10}, {10, 5}, {120, 100}, {300, 0}, {-5, 7}, {990, 100}}
	want := []Extent{{0, 15}, {100, 120}, {990, 10}}
	if got := Normalize(in, 1000); !reflect.DeepEqual(got, want) {
		t.Fatalf("Normalize = %v, want %v", got, want)
	}
}

func TestLogChangedBetweenSequences(t *testing.T) {
	l := NewLog(NewEpoch())
	first := l.Current()
	l.Record(0, 1)                        // seq 1: block 0
	l.Record(5*BlockSize+10, BlockSize)   // seq 2: blocks 5-6
	mid := l.Current()                    // seq 2
	l.Record(BlockSize, 1)                // seq 3: block 1 -> merges with 0
	l.Record(10*BlockSize-1, 2)           // seq 4: blocks 9-10, clipped below
	capacity := int64(10*BlockSize - 512) // last block is partial
	got := l.Changed(first.Seq, l.Current().Seq, capacity)
	want := []Extent{{0, 2 * BlockSize}, {5 * BlockSize, 2 * BlockSize}, {9 * BlockSize, BlockSize - 512}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Changed(all) = %v, want %v", got, want)
	}
	if got := l.Changed(first.Seq, mid.Seq, capacity); !reflect.DeepEqual(got, []Extent{{0, BlockSize}, {5 * BlockSize, 2 * BlockSize}}) {
		t.Fatalf("Changed(first..mid) = %v", got)
	}
	if got := l.Changed(mid.Seq, mid.Seq, capacity); len(got) != 0 {
		t.Fatalf("Changed(mid..mid) = %v, want none", got)
	}
}

// pageAll loops like a backup client: until the disk is covered.
func pageAll(t *testing.T, areas []Extent, capacity int64) ([]Extent, int) {
	t.Helper()
	var got []Extent
	calls := 0
	for off := int64(0); off < capacity; {
		p := Paginate(areas, off, capacity, MaxAreasPerPage, MaxPageWindow)
		calls++
		if p.StartOffset != off || p.Length <= 0 {
			t.Fatalf("page at %d: %+v", off, p)
		}
		if len(p.Areas) > MaxAreasPerPage || p.Length > MaxPageWindow {
			t.Fatalf("page at %d exceeds limits: %d areas, %d bytes", off, len(p.Areas), p.Length)
		}
		for _, a := range p.Areas {
			if a.Start < p.StartOffset || a.End() > p.StartOffset+p.Length {
				t.Fatalf("area %+v outside page %+v", a, p)
			}
		}
		got = append(got, p.Areas...)
		off += p.Length
	}
	return Normalize(got, capacity), calls
}

func TestPaginateCoversEverythingOnce(t *testing.T) {
	capacity := int64(1 << 30) // 4 windows
	var areas []Extent
	// 200 areas packed into the first window force an early page end; one
	// area straddles the first window boundary and must be split, not lost.
	for i := range int64(200) {
		areas = append(areas, Extent{Start: i * 2 * BlockSize, Length: BlockSize})
	}
	areas = append(areas, Extent{Start: MaxPageWindow - BlockSize, Length: 3 * BlockSize})
	areas = append(areas, Extent{Start: capacity - BlockSize, Length: BlockSize})
	areas = Normalize(areas, capacity)
	got, calls := pageAll(t, areas, capacity)
	if !reflect.DeepEqual(got, areas) {
		t.Fatalf("paged areas differ: got %d, want %d", len(got), len(areas))
	}
	if calls < 7 {
		t.Fatalf("expected several calls (64-area limit and 256 MiB window), got %d", calls)
	}
}

func TestPaginateEmptyDisk(t *testing.T) {
	got, calls := pageAll(t, nil, 10<<30)
	if len(got) != 0 || calls != 40 {
		t.Fatalf("empty 10 GiB disk: %d areas in %d calls, want 0 in 40", len(got), calls)
	}
}

func TestForkRevertsToTheSnapshotAndAbandonsTheLineAfterIt(t *testing.T) {
	l := NewLog(NewEpoch())
	l.Record(0, 1) // seq 1: block 0
	snap := l.Current()
	l.Record(2*BlockSize, 1) // seq 2: block 2, abandoned by the revert
	l.Record(3*BlockSize, 1) // seq 3: block 3, abandoned by the revert
	abandoned := l.Current()
	f := l.Fork(snap.Seq)
	if f.Current() != snap {
		t.Fatalf("after the revert the change id is %v, want the snapshot's %v", f.Current(), snap)
	}
	if !f.Knows(snap.Seq) || f.Knows(2) || f.Knows(abandoned.Seq) || !f.Abandoned(3) {
		t.Fatalf("ids after the snapshot must be unknown on the new line, the snapshot's known")
	}
	next := f.Record(5*BlockSize, 1)
	if next.Seq != abandoned.Seq+1 {
		t.Fatalf("first write after the revert got %v, want the epoch's next number %d", next, abandoned.Seq+1)
	}
	if got := f.Changed(snap.Seq, next.Seq, 10*BlockSize); !reflect.DeepEqual(got, []Extent{{5 * BlockSize, BlockSize}}) {
		t.Fatalf("changes since the snapshot on the new line = %v, want only block 5", got)
	}
	// The old line still answers for snapshots taken on it.
	if got := l.Changed(snap.Seq, abandoned.Seq, 10*BlockSize); !reflect.DeepEqual(got, []Extent{{2 * BlockSize, 2 * BlockSize}}) {
		t.Fatalf("old line = %v", got)
	}
	// A second revert to the same point abandons the first fork's ids too.
	g := l.Fork(snap.Seq)
	if g.Knows(next.Seq) || g.Current() != snap {
		t.Fatalf("second fork knows %v or is at %v", next, g.Current())
	}
}
