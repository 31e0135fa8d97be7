package diskfile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestCopyIsSparsePointInTime(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "live.img")
	const size = 64 << 20
	if err := EnsureSize(src, size); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := bytes.Repeat([]byte("A"), 4096)
	if _, err := f.WriteAt(old, 32<<20); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "frozen.img")
	if err := Copy(src, dst, size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte("B"), 4096), 32<<20); err != nil {
		t.Fatal(err)
	}
	frozen, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(frozen) != size || !bytes.Equal(frozen[32<<20:32<<20+4096], old) {
		t.Fatalf("frozen copy does not hold the old bytes")
	}
	g, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ext, err := DataExtents(g, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var allocated int64
	for _, e := range ext {
		allocated += e.Length
		if e.Start > 32<<20 || e.Start+e.Length < 32<<20+4096 {
			t.Errorf("unexpected extent %+v", e)
		}
	}
	if len(ext) != 1 || allocated > 1<<20 {
		t.Fatalf("copy is not sparse: %v", ext)
	}
}
