! The paper's heat solver (as clients/c/examples/heat2d.c), serial, in Fortran 2008.
! Implicit Euler on the (M-2)^2 interior nodes by conjugate gradients to a relative residual
! of 1e-14; the field f(j, i) is the C-order u[i, j] (i along x1: rows 0 and M-1 are the
! T1/T2 walls, which own the corners; j along x2: T3/T4). Exit 0 after STOP, 2, 1 or 143.
program heat2d_f
  use breed_client
  implicit none
  type(breed_t) :: cl
  integer :: rc, code, t, g, n
  real(8) :: grid, dt, alpha, length, r, lam(5)
  real(8), allocatable :: u(:, :), b(:, :), f(:, :)
  rc = breed_init(cl, 0, 1)
  do while (rc == BREED_OK)
    rc = breed_request(cl)
    if (rc /= BREED_OK) exit
    if (breed_setting(cl, "grid", grid) /= 0 .or. breed_setting(cl, "dt", dt) /= 0 .or. &
        breed_setting(cl, "alpha", alpha) /= 0 .or. breed_setting(cl, "length", length) /= 0 &
        .or. breed_nparams(cl) /= 5) then
      rc = breed_abort(cl, "not a heat problem")
      write (0, '(a)') "heat2d_f: error: not a heat problem (settings grid, dt, alpha, length)"
      call breed_close(cl, .true.)
      call exit(1)
    end if
    g = nint(grid)
    n = g - 2
    r = alpha * dt / (length / (g - 1))**2
    lam = [(breed_param(cl, t), t = 1, 5)]
    if (allocated(u)) deallocate(u, b, f)
    allocate(u(n, n), b(n, n), f(g, g))
    u = lam(1)
    b = 0  ! r b: the walls seen through the stencil (b(j, i))
    b(1, :) = b(1, :) + r * lam(4)
    b(n, :) = b(n, :) + r * lam(5)
    b(:, 1) = b(:, 1) + r * lam(2)
    b(:, n) = b(:, n) + r * lam(3)
    do t = 0, breed_steps(cl)
      if (t > 0) call step(u, u + b, r)
      f(1, :) = lam(4)
      f(g, :) = lam(5)
      f(2:g - 1, 2:g - 1) = u
      f(:, 1) = lam(2)
      f(:, g) = lam(3)
      rc = breed_send(cl, t, 0, reshape(f, [g * g]), 0, g)
      if (rc /= BREED_OK) exit
    end do
    if (rc == BREED_OK) rc = breed_finish(cl)
  end do
  code = 1
  if (rc == BREED_STOP) code = 0
  if (rc == BREED_ERR_CONFIG) code = 2
  if (code /= 0) write (0, '(a)') "heat2d_f: error: " // breed_errmsg(cl)
  call breed_close(cl, code /= 0)
  call exit(code)

contains

  function apply(p, r) result(q)  ! (I - r Lap_h) p, zero outside the interior
    real(8), intent(in) :: p(:, :), r
    real(8) :: q(size(p, 1), size(p, 2))
    integer :: m
    m = size(p, 1)
    q = (1 + 4 * r) * p
    q(2:m, :) = q(2:m, :) - r * p(1:m - 1, :)
    q(1:m - 1, :) = q(1:m - 1, :) - r * p(2:m, :)
    q(:, 2:m) = q(:, 2:m) - r * p(:, 1:m - 1)
    q(:, 1:m - 1) = q(:, 1:m - 1) - r * p(:, 2:m)
  end function

  subroutine step(x, rhs, r)  ! CG for (I - r Lap_h) x = rhs, warm-started from x
    real(8), intent(inout) :: x(:, :)
    real(8), intent(in) :: rhs(:, :), r
    real(8), allocatable :: res(:, :), p(:, :), ap(:, :)
    real(8) :: rr, rr_new, target, a
    integer :: it
    res = rhs - apply(x, r)
    p = res
    rr = sum(res * res)
    target = 1d-28 * sum(rhs * rhs)
    it = 0
    do while (rr > target .and. it < 20 * size(x, 1) + 100)
      ap = apply(p, r)
      a = rr / sum(p * ap)
      x = x + a * p
      res = res - a * ap
      rr_new = sum(res * res)
      p = res + (rr_new / rr) * p
      rr = rr_new
      it = it + 1
    end do
  end subroutine
end program
