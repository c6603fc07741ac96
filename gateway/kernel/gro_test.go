package kernel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// cutInto is what the segmenter makes of g: the packets one VXLAN TCP
// stream's segments arrive as, each at offset 16 of a buffer.
func cutInto(t *testing.T, g gsoPacket) [][]byte {
	t.Helper()
	var s segmenter
	if err := s.load(g.build()); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for s.pending() {
		bufs, sizes := [][]byte{make([]byte, 2000)}, make([]int, 1)
		if s.cut(bufs, sizes, 16) == 1 {
			out = append(out, bufs[0][:16+sizes[0]])
		}
	}
	return out
}

// The segments of one stream, cut as the sender's gateway cuts them, are
// joined back into one packet: its headers say the whole length, its
// virtio header says how the kernel cuts it again, and its payload is the
// stream's, in order.
func TestCoalesceJoinsAStream(t *testing.T) {
	payload := make([]byte, 9000)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	for _, g := range []gsoPacket{
		{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("10.1.0.1"), tunnelCsum: true, mss: 1310, payload: payload, flags: 0x18},
		{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("fd01::1"), tunnelCsum: true, mss: 1290, payload: payload[:5000], flags: 0x18},
	} {
		segs := cutInto(t, g)
		// Another flow's packet and a ping in between: not joined.
		other := bytes.Clone(segs[1])
		other[16+40+1]++ // another UDP source port: another flow
		ping := append(make([]byte, 16), 0x60, 0, 0, 0, 0, 8, 58, 64)
		ping = append(ping, make([]byte, 40)...)
		bufs := append([][]byte{segs[0], other, ping}, segs[1:]...)
		joined := make([]bool, len(bufs))
		items := coalesce(bufs, 16, nil, joined)
		if len(items) != 2 || items[0].n != len(segs) || items[1].n != 1 {
			t.Fatalf("%d items: want one of %d segments and the other flow's alone", len(items), len(segs))
		}
		for i, j := range joined {
			if want := i >= 3; j != want {
				t.Errorf("packet %d joined: %v", i, j)
			}
		}
		it := items[0]
		hdr := make([]byte, vnetHdrLen)
		first := bufs[it.buf][16:]
		it.finish(first, hdr, 14)
		l := it.l
		whole := first[:l.payload]
		body := bytes.Clone(first[l.payload:])
		for _, p := range it.iov {
			body = append(body, p...)
		}
		if !bytes.Equal(body, g.payload) {
			t.Error("the joined payload is not the stream's")
		}
		size := l.payload + len(body)
		be, le := binary.BigEndian, binary.LittleEndian
		if got := int(be.Uint16(whole[4:])) + 40; got != size {
			t.Errorf("outer length %d, want %d", got, size)
		}
		if got := int(be.Uint16(whole[l.udp+4:])); got != size-l.udp {
			t.Errorf("UDP length %d, want %d", got, size-l.udp)
		}
		if whole[l.tcp+13] != 0x18 { // the last segment's PSH
			t.Errorf("TCP flags %#x, want PSH|ACK", whole[l.tcp+13])
		}
		want := []int{14 + l.payload, g.mss, 14 + l.tcp, 16, 14 + l.udp, 14 + l.nh}
		got := []int{int(le.Uint16(hdr[2:])), int(le.Uint16(hdr[4:])), int(le.Uint16(hdr[6:])), int(le.Uint16(hdr[8:])), int(le.Uint16(hdr[20:])), int(le.Uint16(hdr[22:]))}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("virtio header fields %v, want %v", got, want)
				break
			}
		}
		if hdr[1]&vnetGSOTunnelIPv6 == 0 || hdr[0]&vnetNeedsCsum == 0 || hdr[0]&vnetTunnelCsum == 0 {
			t.Errorf("virtio flags %#x, type %#x", hdr[0], hdr[1])
		}
	}
}

// Segments that do not follow each other are not joined: a gap in the
// sequence, a SYN, a segment longer than the first.
func TestCoalesceKeepsApart(t *testing.T) {
	segs := cutInto(t, gsoPacket{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("10.1.0.1"), tunnelCsum: true, mss: 1000, payload: make([]byte, 4000), flags: 0x18})
	l, ok := parseVXLANTCP(segs[0][16:])
	if !ok {
		t.Fatal("a VXLAN TCP segment not recognised")
	}
	for name, bufs := range map[string][][]byte{
		"gap":         {segs[0], segs[2]},
		"reordered":   {segs[1], segs[0]},
		"SYN":         {segs[0], func() []byte { p := bytes.Clone(segs[1]); p[16+l.tcp+13] |= 0x02; return p }()},
		"another VNI": {segs[0], func() []byte { p := bytes.Clone(segs[1]); p[16+l.udp+14]++; return p }()},
	} {
		joined := make([]bool, len(bufs))
		for _, it := range coalesce(bufs, 16, nil, joined) {
			if it.n > 1 {
				t.Errorf("%s: joined %d segments", name, it.n)
			}
		}
	}
}

// FuzzCoalesce: whatever a peer sends through the tunnel, joining never
// panics nor reads or writes outside the packets.
func FuzzCoalesce(f *testing.F) {
	segs := [][]byte{}
	var s segmenter
	if err := s.load(gsoPacket{outer: netip.MustParseAddr("fd00::1"), inner: netip.MustParseAddr("10.1.0.1"), tunnelCsum: true, mss: 100, payload: make([]byte, 250), flags: 0x18}.build()); err != nil {
		f.Fatal(err)
	}
	for s.pending() {
		bufs, sizes := [][]byte{make([]byte, 400)}, make([]int, 1)
		if s.cut(bufs, sizes, 0) == 1 {
			segs = append(segs, bufs[0][:sizes[0]])
		}
	}
	f.Add(segs[0], segs[1], segs[2])
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		bufs := [][]byte{a, b, c}
		joined := make([]bool, 3)
		hdr := make([]byte, vnetHdrLen)
		for _, it := range coalesce(bufs, 0, nil, joined) {
			if it.n > 1 {
				it.finish(bufs[it.buf], hdr, 14)
			}
		}
	})
}
