"""Validation rules of request and response primitives, each with its rsc."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation, ResourceType
from acmews.errors import OneM2MError, PrimitiveError, TargetNotReachable
from acmews.primitive import (
    Request,
    Response,
    copy_request,
    error_response,
    is_int_not_bool,
    primitive_from_object,
)


def req(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": "r1", "rvi": "4"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


class IntCheckTests(SynchronousTestCase):
    def test_int_not_bool(self) -> None:
        for value in (0, -3, 2**70, RSC.OK, Operation.CREATE):
            self.assertTrue(is_int_not_bool(value), value)
        for value in (True, False, 1.0, "1", None, [1]):
            self.assertFalse(is_int_not_bool(value), value)


class RequestValidationTests(SynchronousTestCase):
    def assert_rejected(self, m: Any, rsc: RSC, rqi: str | None = "r1", text: str = "") -> None:
        e = self.assertRaises(PrimitiveError, primitive_from_object, m)
        self.assertEqual(e.rsc, rsc)
        self.assertEqual(e.rqi, rqi)
        self.assertIn(text, e.reason)
        self.assertIsInstance(e, OneM2MError)

    def test_valid_retrieve(self) -> None:
        r = primitive_from_object(req())
        assert isinstance(r, Request)
        self.assertIs(r.op, Operation.RETRIEVE)
        self.assertEqual((r.to, r.fr, r.rqi, r.rvi), ("cse-in", "CAdmin", "r1", "4"))

    def test_op_must_be_integer_1_to_5(self) -> None:
        for op in (0, 6, "1", 1.0, True, None, [1]):
            m = req(op=op)
            if op is None:
                m["op"] = None
            self.assert_rejected(m, RSC.BAD_REQUEST, text="'op'")
        for op in range(1, 6):
            extra: dict[str, Any] = {}
            if op == 1:
                extra = {"ty": 3, "pc": {"m2m:cnt": {}}}
            elif op in (3, 5):
                extra = {"pc": {"x": 1}}
            self.assertEqual(primitive_from_object(req(op=op, **extra)).op, op)  # type: ignore[union-attr]

    def test_rqi_missing_or_not_string(self) -> None:
        m = req()
        del m["rqi"]
        self.assert_rejected(m, RSC.BAD_REQUEST, rqi=None, text="'rqi'")
        self.assert_rejected(req(rqi=42), RSC.BAD_REQUEST, rqi=None, text="string")

    def test_to_must_be_string(self) -> None:
        m = req()
        del m["to"]
        self.assert_rejected(m, RSC.BAD_REQUEST, text="'to'")
        self.assert_rejected(req(to=5), RSC.BAD_REQUEST, text="'to'")
        self.assert_rejected(req(to=""), RSC.BAD_REQUEST, text="'to'")

    def test_rvi_missing_is_4001(self) -> None:
        m = req()
        del m["rvi"]
        self.assert_rejected(m, RSC.RELEASE_VERSION_NOT_SUPPORTED, text="'rvi'")

    def test_rvi_unsupported_is_4001_wrong_type_4000(self) -> None:
        self.assert_rejected(req(rvi="1"), RSC.RELEASE_VERSION_NOT_SUPPORTED, text="'1'")
        self.assert_rejected(req(rvi=4), RSC.BAD_REQUEST, text="'rvi'")
        for rvi in ("2a", "3", "4", "5"):
            self.assertEqual(primitive_from_object(req(rvi=rvi)).rvi, rvi)

    def test_fr_mandatory_except_ae_create(self) -> None:
        m = req()
        del m["fr"]
        self.assert_rejected(m, RSC.BAD_REQUEST, text="'fr'")
        self.assert_rejected(req(fr=""), RSC.BAD_REQUEST, text="'fr'")
        self.assert_rejected(req(fr=7), RSC.BAD_REQUEST, text="'fr'")
        cnt = req(op=1, ty=3, pc={"m2m:cnt": {}})
        del cnt["fr"]
        self.assert_rejected(cnt, RSC.BAD_REQUEST, text="'fr'")
        ae = req(op=1, ty=2, pc={"m2m:ae": {"api": "Nx", "rr": True}})
        del ae["fr"]
        r = primitive_from_object(ae)
        assert isinstance(r, Request)
        self.assertTrue(r.is_ae_create)
        self.assertIsNone(r.fr)
        self.assertEqual(primitive_from_object(dict(ae, fr="")).fr, "")  # type: ignore[union-attr]

    def test_ty_only_on_create_and_mandatory_there(self) -> None:
        self.assert_rejected(req(ty=3), RSC.BAD_REQUEST, text="only allowed on CREATE")
        self.assert_rejected(req(op=1, pc={"m2m:cnt": {}}), RSC.BAD_REQUEST, text="'ty'")
        self.assert_rejected(req(op=1, ty="3", pc={"m2m:cnt": {}}), RSC.BAD_REQUEST, text="'ty'")

    def test_pc_where_mandatory(self) -> None:
        self.assert_rejected(req(op=1, ty=3), RSC.BAD_REQUEST, text="'pc'")
        self.assert_rejected(req(op=1, ty=3, pc=[1]), RSC.BAD_REQUEST, text="'pc'")
        self.assert_rejected(req(op=3), RSC.BAD_REQUEST, text="'pc'")
        self.assert_rejected(req(op=5), RSC.BAD_REQUEST, text="'pc'")
        self.assertIsNone(primitive_from_object(req(op=4)).pc)

    def test_optional_parameter_types(self) -> None:
        self.assert_rejected(req(rcn="1"), RSC.BAD_REQUEST, text="'rcn'")
        self.assert_rejected(req(rt=5), RSC.BAD_REQUEST, text="'rt'")
        self.assert_rejected(req(rt={"rtv": 9}), RSC.BAD_REQUEST, text="rtv")
        self.assert_rejected(req(fc=[1]), RSC.BAD_REQUEST, text="'fc'")
        self.assert_rejected(req(rqet=1.5), RSC.BAD_REQUEST, text="'rqet'")
        self.assert_rejected(req(drt="1"), RSC.BAD_REQUEST, text="'drt'")

    def test_no_response(self) -> None:
        r = primitive_from_object(req(rt={"rtv": 5}))
        assert isinstance(r, Request)
        self.assertTrue(r.wants_no_response)
        self.assertFalse(Request(Operation.RETRIEVE, "x", "r").wants_no_response)

    def test_not_a_mapping_or_neither(self) -> None:
        for value in ([1, 2], 42, "x", None, 1.5):
            self.assert_rejected(value, RSC.BAD_REQUEST, rqi=None, text="object")
        self.assert_rejected({"rqi": "r1", "to": "x"}, RSC.BAD_REQUEST, text="neither")
        self.assert_rejected({"rqi": 5}, RSC.BAD_REQUEST, rqi=None, text="neither")

    def test_unmodelled_parameters_are_kept(self) -> None:
        m = req(rcn=1, ec=2, tkns=["t"], xyz={"a": 1}, ot="20261126T000000")
        r = primitive_from_object(m)
        assert isinstance(r, Request)
        self.assertEqual(r.extra, {"xyz": {"a": 1}})
        self.assertEqual(r.to_dict(), m)

    def test_all_parameters_round_trip(self) -> None:
        m = req(
            op=1,
            ty=4,
            pc={"m2m:cin": {"con": "x"}},
            rcn=1,
            rt={"rtv": 3, "nu": ["a"]},
            rqet="20261126T000000",
            rset=1000,
            oet="20261126T000001",
            ot="20261126T000002",
            drt=1,
            ec=2,
            da=True,
            gid="g",
            tids=["t"],
            ltids=["l"],
            tkns=["k"],
            vsi="v",
            rids=["r"],
        )
        m["fc"] = {"fu": 1}
        self.assertEqual(primitive_from_object(m).to_dict(), m)


class ParameterTypeTests(SynchronousTestCase):
    """Every parameter as TS-0004 types it (the hostile run found these accepted)."""

    assert_rejected = RequestValidationTests.assert_rejected

    def test_rqi_must_not_be_empty(self) -> None:
        self.assert_rejected(req(rqi=""), RSC.BAD_REQUEST, rqi=None, text="'rqi'")

    def test_times(self) -> None:
        for key in ("rqet", "rset", "oet"):
            for bad in (
                *("garbage", -5, "-5", 10**400, 1.5, "²", "20301302T030405", [1], True),
                *("PT", "P", "PT-2S", "P999999999999Y"),
            ):
                self.assert_rejected(req(**{key: bad}), RSC.BAD_REQUEST, text=f"'{key}'")
            for good in ("20300102T030405", "20300102T030405,25", 0, 1500, "1500", "PT2S"):
                r = primitive_from_object(req(**{key: good}))
                self.assertEqual(getattr(r, key), good)

    def test_small_integers(self) -> None:
        for key, bad in (
            ("drt", 3),
            ("drt", 0),
            ("rcn", 2**70),
            ("rcn", -1),
            ("ty", 2**64),
        ):
            extra: dict[str, Any] = {"op": 1, "pc": {"x": 1}} if key == "ty" else {}
            self.assert_rejected(req(**{key: bad, **extra}), RSC.BAD_REQUEST, text=f"'{key}'")
        self.assertEqual(primitive_from_object(req(drt=2)).drt, 2)  # type: ignore[union-attr]

    def test_response_rsc_range(self) -> None:
        for rsc in (2**70, 42, -2000):
            e = self.assertRaises(
                PrimitiveError, primitive_from_object, {"rsc": rsc, "rqi": "r1", "rvi": "4"}
            )
            self.assertEqual(e.rsc, RSC.BAD_REQUEST)


class ResponseValidationTests(SynchronousTestCase):
    def test_valid_response(self) -> None:
        r = primitive_from_object({"rsc": 2000, "rqi": "a", "rvi": "4", "pc": {"m2m:cb": {}}})
        assert isinstance(r, Response)
        self.assertIs(r.rsc, RSC.OK)
        self.assertTrue(r.ok)

    def test_unknown_rsc_is_kept(self) -> None:
        r = primitive_from_object({"rsc": 2999, "rqi": "a"})
        self.assertEqual(r.rsc, 2999)  # type: ignore[union-attr]
        self.assertIsNone(r.rvi)

    def test_needs_rsc_and_rqi(self) -> None:
        for m, rqi in (
            ({"rsc": "2000", "rqi": "a"}, "a"),
            ({"rsc": 2000}, None),
            ({"rsc": 2000, "rqi": 1}, None),
            ({"rsc": None, "rqi": "a"}, "a"),
        ):
            e = self.assertRaises(PrimitiveError, primitive_from_object, m)
            self.assertEqual((e.rsc, e.rqi, e.is_response), (RSC.BAD_REQUEST, rqi, True))

    def test_plain_response_checks(self) -> None:
        """A response of rsc, rqi, rvi and pc (every NOTIFY's answer) is checked as any
        other: a bool is no rsc, and rvi must be a supported release, as a string."""
        for m, rsc, text in (
            ({"rsc": True, "rqi": "a"}, RSC.BAD_REQUEST, "'rsc'"),
            ({"rsc": 2000, "rqi": "a", "rvi": 4}, RSC.BAD_REQUEST, "'rvi' must be a string"),
            ({"rsc": 2000, "rqi": "a", "rvi": ["4"]}, RSC.BAD_REQUEST, "'rvi' must be"),
            ({"rsc": 2000, "rqi": "a", "rvi": "9"}, RSC.RELEASE_VERSION_NOT_SUPPORTED, "'9'"),
        ):
            e = self.assertRaises(PrimitiveError, primitive_from_object, m)
            self.assertEqual((e.rsc, e.rqi, e.is_response), (rsc, "a", True))
            self.assertIn(text, e.reason)
        r = primitive_from_object({"rsc": 2000, "rqi": "a", "rvi": "2a"})
        self.assertEqual((r.rsc, r.rvi), (RSC.OK, "2a"))

    def test_response_with_op_is_a_response(self) -> None:
        self.assertIsInstance(primitive_from_object({"rsc": 2000, "rqi": "a", "op": 1}), Response)

    def test_extra_kept_without_rvi(self) -> None:
        # found by hypothesis: with rvi absent, a third key was dropped
        m = {"rsc": 2000, "rqi": "a", "op": 0}
        r = primitive_from_object(m)
        self.assertEqual(r.to_dict(), m)

    def test_round_trip_keeps_extra(self) -> None:
        m = {"rsc": 2001, "rqi": "a", "rvi": "3", "pc": {}, "to": "x", "fr": "y", "drt": 1}
        self.assertEqual(primitive_from_object(m).to_dict(), m)


class ErrorResponseTests(SynchronousTestCase):
    def test_from_exception(self) -> None:
        r = error_response("q", TargetNotReachable("gone"), rvi="3")
        self.assertEqual(
            r.to_dict(), {"rsc": 5103, "rqi": "q", "rvi": "3", "pc": {"m2m:dbg": "gone"}}
        )
        self.assertEqual(r.debug, "gone")

    def test_from_code_and_unreadable_rqi(self) -> None:
        r = error_response(None, RSC.NOT_FOUND, rvi="zz")
        self.assertEqual((r.rqi, r.rvi, r.rsc), ("", "4", 4004))
        self.assertEqual(r.debug, "not found")

    def test_enums(self) -> None:
        self.assertEqual(ResourceType.SUB, 23)
        self.assertEqual(RSC(5204).name, "SUBSCRIPTION_VERIFICATION_INITIATION_FAILED")


class CopyRequestTests(SynchronousTestCase):
    def test_a_copy_with_changes_leaves_the_original(self) -> None:
        original = Request(
            Operation.NOTIFY, "cse-in/x", "r1", "4", "Cx", pc={"a": 1}, rqet=5, extra={"zz": 1}
        )
        copy = copy_request(original, fr="/id-in/Cx", rqi="r2")
        self.assertEqual((copy.fr, copy.rqi), ("/id-in/Cx", "r2"))
        self.assertEqual((original.fr, original.rqi), ("Cx", "r1"))
        for name in ("op", "to", "rvi", "pc", "rqet", "extra"):
            self.assertEqual(getattr(copy, name), getattr(original, name))
