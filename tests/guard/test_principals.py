import pytest

from jijian.guard.principals import ACLError, Principal, can_read, validate_readers


def test_user_role_and_public_entries_grant_access():
    alice = Principal("alice", frozenset({"finance"}))
    assert can_read(alice, ["alice"])
    assert can_read(alice, ["role:finance", "bob"])
    assert can_read(alice, ["*"])
    assert can_read(alice, None)  # no ACL: public
    assert not can_read(alice, ["bob", "role:hr"])
    assert not can_read(alice, [])  # empty ACL: nobody but admins
    assert not can_read(alice, ["finance"])  # a role is only matched through the role: prefix


def test_admin_reads_everything_and_none_principal_skips_the_check():
    assert can_read(Principal("root", frozenset({"admin"})), [])
    assert can_read(None, ["bob"])


@pytest.mark.parametrize("bad", ["alice", [""], ["role:"], [" bob"], [3]])
def test_malformed_readers_are_rejected_with_the_index(bad):
    with pytest.raises(ACLError, match="readers"):
        validate_readers(bad)


def test_principal_user_must_be_a_name():
    with pytest.raises(ACLError):
        Principal("role:admin")
    with pytest.raises(ACLError):
        Principal("")
