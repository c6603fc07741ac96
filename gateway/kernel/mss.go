package kernel

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// mssTable is the nftables table in which a gateway clamps the MSS of TCP
// connections through its vWires: a SYN forwarded into or out of a
// gateway half ("vw…") gets at most the MSS of the route it takes (`tcp
// option maxseg size set rt mtu`; the kernel only ever lowers it), so TCP
// works at the vWire's MTU even for hosts behind a workload whose own
// links are larger.
const mssTable = "vwire-mss"

// clampMSS installs the table in the network namespace of nsFD (-1: the
// caller's), replacing any previous one.
func clampMSS(nsFD int) error {
	c, err := nftConn(nsFD)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := &nftables.Table{Name: mssTable, Family: nftables.TableFamilyINet}
	c.AddTable(t) // adding an existing table is no error; delete and add afresh
	c.DelTable(t)
	c.AddTable(t)
	ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
	for _, dir := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: dir, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(hostPrefix)}, // "vw*"
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			// tcp flags & (syn|rst) == syn
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
			// tcp option maxseg size set rt mtu
			&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
			&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table %s for TCP MSS clamping: %w", mssTable, err)
	}
	return nil
}

// unclampMSS removes the table, if there is one.
func unclampMSS(nsFD int) error {
	c, err := nftConn(nsFD)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := &nftables.Table{Name: mssTable, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing nftables table %s: %w", mssTable, err)
	}
	return nil
}

func nftConn(nsFD int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if nsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}
