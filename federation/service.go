package federation

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/federation/federationpb"
)

// Service serves the federation API to the domain's admin.
type Service struct {
	federationpb.UnimplementedFederationServer
	Own   spiffeid.TrustDomain
	Peers *Peers
	// Bundle is the domain's own bundle, as its bundle endpoint serves it.
	Bundle BundleFunc
	// CA is the built-in CA; nil when SPIRE issues the domain's SVIDs.
	CA *CA
	// Rotation timings for RotateCA.
	Propagation, Overlap time.Duration
	// ValidateDomain checks a peer's domain name.
	ValidateDomain func(string) error
	// LocateBundleEndpoint finds a peer's bundle endpoint URL when none is
	// given (through its _spiffe-bundle._tcp SRV record); nil: it must be.
	LocateBundleEndpoint func(ctx context.Context, domain string) (string, error)
}

func (s *Service) admin(ctx context.Context) error {
	return RequireAdmin(ctx, s.Own, "change federation")
}

// RequireAdmin refuses a call to a domain of trust domain td from anyone
// but its admin: "only spiffe://TD/vwire/admin may " + do.
func RequireAdmin(ctx context.Context, td spiffeid.TrustDomain, do string) error {
	if id, ok := PeerID(ctx); !ok || id != AdminID(td) {
		return status.Errorf(codes.PermissionDenied, "only %s may %s", AdminID(td), do)
	}
	return nil
}

func (s *Service) GetBundle(context.Context, *federationpb.GetBundleRequest) (*federationpb.Bundle, error) {
	b, err := s.Bundle()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	raw, err := b.Marshal()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &federationpb.Bundle{TrustDomain: s.Own.Name(), Spiffe: raw}, nil
}

func (s *Service) AddPeer(ctx context.Context, req *federationpb.AddPeerRequest) (*federationpb.PeerStatus, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	peer, err := s.peerFromProto(req.GetPeer())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.locate(ctx, &peer); err != nil {
		return nil, err
	}
	if err := s.Peers.Add(ctx, peer, req.GetBundle()); err != nil {
		if errors.Is(err, ErrBadPeer) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	for _, st := range s.Peers.List() {
		if st.Domain == peer.Domain {
			return statusProto(st), nil
		}
	}
	return nil, status.Errorf(codes.Internal, "peer %q vanished", peer.Domain)
}

func (s *Service) peerFromProto(p *federationpb.Peer) (Peer, error) {
	if err := s.ValidateDomain(p.GetDomain()); err != nil {
		return Peer{}, err
	}
	tdName := p.GetTrustDomain()
	if tdName == "" {
		tdName = p.GetDomain()
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return Peer{}, errors.New("trust domain " + tdName + ": " + err.Error())
	}
	if td == s.Own {
		return Peer{}, errors.New("a domain cannot federate with its own trust domain " + td.Name())
	}
	peer := Peer{Domain: p.GetDomain(), TrustDomain: td, BundleEndpointURL: p.GetBundleEndpointUrl(), TrustOnly: p.GetTrustOnly()}
	if peer.Addresses, err = ParseRanges(p.GetAddresses()); err != nil {
		return Peer{}, err
	}
	if p.GetEndpointId() != "" {
		if peer.EndpointID, err = spiffeid.FromString(p.GetEndpointId()); err != nil {
			return Peer{}, errors.New("endpoint ID " + p.GetEndpointId() + ": " + err.Error())
		}
	}
	return peer, nil
}

// locate fills in the bundle endpoint of a peer added without one. DNS
// only locates it: the endpoint is still authenticated by the bootstrap
// bundle.
func (s *Service) locate(ctx context.Context, peer *Peer) error {
	if peer.BundleEndpointURL != "" || s.CA == nil || s.LocateBundleEndpoint == nil {
		return nil
	}
	url, err := s.LocateBundleEndpoint(ctx, peer.Domain)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "%q: no --bundle-endpoint given, and none found in DNS: %v", peer.Domain, err)
	}
	peer.BundleEndpointURL = url
	return nil
}

// Configure adds a peer from configuration unless it is stored with the
// same settings already (then it keeps the bundle it last fetched).
func (s *Service) Configure(ctx context.Context, p *federationpb.Peer, bundle []byte) error {
	peer, err := s.peerFromProto(p)
	if err != nil {
		return err
	}
	if err := s.locate(ctx, &peer); err != nil {
		return err
	}
	if have, ok := s.Peers.Lookup(peer.Domain); ok {
		if peer.EndpointID.IsZero() {
			peer.EndpointID = ProxyID(peer.TrustDomain)
		}
		if have.Equal(peer) {
			return nil
		}
	}
	return s.Peers.Add(ctx, peer, bundle)
}

func (s *Service) ListPeers(ctx context.Context, _ *federationpb.ListPeersRequest) (*federationpb.ListPeersResponse, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	resp := &federationpb.ListPeersResponse{}
	for _, st := range s.Peers.List() {
		resp.Peers = append(resp.Peers, statusProto(st))
	}
	return resp, nil
}

func (s *Service) RemovePeer(ctx context.Context, req *federationpb.RemovePeerRequest) (*federationpb.RemovePeerResponse, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	if err := s.Peers.Remove(ctx, req.GetDomain()); err != nil {
		if errors.Is(err, ErrNotFederated) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &federationpb.RemovePeerResponse{}, nil
}

func (s *Service) RotateCA(ctx context.Context, _ *federationpb.RotateCARequest) (*federationpb.RotateCAResponse, error) {
	if err := s.admin(ctx); err != nil {
		return nil, err
	}
	if s.CA == nil {
		return nil, status.Error(codes.FailedPrecondition, "this domain's SVIDs come from SPIRE: rotate with SPIRE")
	}
	if err := s.CA.Rotate(s.Propagation, s.Overlap); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	step, at := s.CA.RotationStatus()
	return &federationpb.RotateCAResponse{NextStep: step, At: timestamppb.New(at)}, nil
}

func statusProto(st PeerStatus) *federationpb.PeerStatus {
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	p := &federationpb.PeerStatus{
		Peer: &federationpb.Peer{Domain: st.Domain, TrustDomain: st.TrustDomain.Name(), BundleEndpointUrl: st.BundleEndpointURL,
			TrustOnly: st.TrustOnly, Addresses: RangeStrings(st.Addresses)},
		LastFetched: ts(st.LastFetched), Expires: ts(st.Expires), Authorities: int32(st.Authorities),
		LastError: st.LastError, NextFetch: ts(st.NextFetch), Source: st.Source,
	}
	if !st.EndpointID.IsZero() {
		p.Peer.EndpointId = st.EndpointID.String()
	}
	return p
}

// OwnBundle is the BundleFunc of a domain with the built-in CA: its
// published roots, with the refresh hint its peers should follow.
func OwnBundle(ca *CA, refreshHint time.Duration) BundleFunc {
	return func() (*spiffebundle.Bundle, error) {
		b := spiffebundle.FromX509Bundle(ca.Bundle())
		b.SetRefreshHint(refreshHint)
		return b, nil
	}
}
