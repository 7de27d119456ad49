"""Testing your code against acmews with its doubles (``acmews.testing``): no sockets, no
global reactor, so it runs in a trial ``SynchronousTestCase``.
``python -m twisted.trial examples/test_registration.py`` runs it.
"""

from twisted.trial.unittest import SynchronousTestCase

from acmews.codes import RSC, Operation
from acmews.testing import memory_cse


class RegistrationTests(SynchronousTestCase):
    def test_an_ae_registers(self):
        cse = memory_cse()
        ae = {"m2m:ae": {"api": "Nmyapp", "rr": False, "srv": ["4"]}}
        created = self.successResultOf(
            cse.request(Operation.CREATE, "cse-in", fr=None, ty=2, pc=ae)
        )
        self.assertEqual(created.rsc, RSC.CREATED)
